"""Running nodes on the native server (the default) or uvicorn: one process, or several
sharing a port (SO_REUSEPORT).

Process and socket I/O. On SIGTERM/SIGINT a node first drains its clients (each gets a
``disconnect`` with reconnect advice and its own reconnect ``delay``, then a 1001 close;
the disconnects spread over ``drain_window``: ``TidingsApp.drain``), then uvicorn closes
sockets.
Several worker processes on one port only make sense with a broker they all share
(Redis): with the memory or sqlite broker each would hold different channels.

The listening socket is bound before anything starts (the broker, the app's "node
started"), so an address already in use ends the command with one line
(``ListenError``), on either backend.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import enum
import logging
import multiprocessing
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import replace
from types import FrameType
from typing import Any, Final

import uvicorn
from uvicorn._types import ASGIReceiveEvent
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from tidings.brokers.factory import MissingExtra, UnknownBroker, UnusableDataDirectory
from tidings.errors import ConfigError, TidingsError
from tidings.server.access_log import AccessLogMiddleware, TokenRedactingFilter
from tidings.server.app import TidingsApp
from tidings.server.native.server import run_native
from tidings.server.native.serving import MAX_PIPELINED
from tidings.server.settings import Settings
from tidings.sources.registry import SourceMissingExtra

logger = logging.getLogger(__name__)

WS_PING_INTERVAL_S: Final = 20.0
WS_PING_TIMEOUT_S: Final = 20.0
LISTEN_BACKLOG: Final = 4096
_PR_SET_PDEATHSIG: Final = 1  # from <linux/prctl.h>


class ExitStatus(enum.IntEnum):
    """How ``tidings serve`` ends (docs/configuration.md, "Exit statuses")."""

    OK = 0
    CONFIG = 1  # an invalid setting (click's status for an error it reports)
    USAGE = 2  # an unknown option or argument (click's)
    LISTEN = 3  # the address cannot be bound: uvicorn's STARTUP_FAILURE
    MISSING_EXTRA = 4  # a broker's or a source's
    UNKNOWN_BROKER = 5
    DATA_DIRECTORY = 6


def exit_status_of(error: TidingsError) -> ExitStatus:
    """Return the exit status of a node that could not start because of ``error``."""
    for kind, status in (
        (ListenError, ExitStatus.LISTEN),
        (MissingExtra, ExitStatus.MISSING_EXTRA),
        (SourceMissingExtra, ExitStatus.MISSING_EXTRA),
        (UnknownBroker, ExitStatus.UNKNOWN_BROKER),
        (UnusableDataDirectory, ExitStatus.DATA_DIRECTORY),
    ):
        if isinstance(error, kind):
            return status
    return ExitStatus.CONFIG


class ListenError(TidingsError):
    """The node cannot listen on its address (in use, not this machine's, not allowed)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port}: {reason}")
        self.host = host
        self.port = port
        self.reason = reason


class _DrainingServer(uvicorn.Server):
    """uvicorn, but on SIGTERM/SIGINT tidings tells clients first (disconnect push, 1001)."""

    def __init__(self, config: uvicorn.Config, app: TidingsApp) -> None:
        super().__init__(config)
        self._tidings = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets:  # uvicorn says nothing when given sockets; supervisors want a line
            host, port = sockets[0].getsockname()[:2]
            logger.info("listening on http://%s:%d (process %d)", host, port, os.getpid())

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._tidings.drain()
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Handle SIGTERM/SIGINT as uvicorn does, but end with exit code 0.

        uvicorn re-raises the captured signal once it has shut down, so a drained,
        orderly stop would look like a crash (-15, or "Aborted!" and 1 for SIGINT) to
        process supervisors. A completed drain is a clean exit.
        """
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()


class TokenRedaction(logging.Filter):
    """Rewrite ``token=<jwt>`` in a log record's arguments as ``token=[redacted]``.

    uvicorn logs each request's path with its query string (its access log, and the
    accepted WebSocket handshakes): a connection token given as ``?token=`` would be
    written to the log, where anyone who reads the log could use it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(arg, str) for arg in args):
            record.args = tuple(
                _TOKEN_PARAMETER.sub(r"\1token=[redacted]", arg) if isinstance(arg, str) else arg
                for arg in args
            )
        return True


_TOKEN_PARAMETER: Final = re.compile(r"([?&])token=[^&\s\"]*")
# The uvicorn loggers that write request paths with their query strings.
_PATH_LOGGERS: Final = ("uvicorn.access", "uvicorn.error")


class _BoundedPipelineProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with pipelined requests bounded (docs/protocol.md §2.5).

    uvicorn resumes reading after every response, however many pipelined requests it
    already holds: a client that pipelines and never reads grew a node by a gibibyte.
    Here reading stays paused while more than ``MAX_PIPELINED`` requests wait.
    """

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if len(self.pipeline) > MAX_PIPELINED and not self.transport.is_closing():
            self.flow.pause_reading()


class _PausingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, reading no further ping while its pongs wait.

    uvicorn went on reading a client that reads nothing back: every ping it sent was
    answered into the write buffer (+125 MiB from one client). Here a ping received
    while writes are paused pauses reading until writing resumes, as on the native
    server, so TCP holds such a client back. Paused writes alone do not pause reading:
    the app bounds what it sends (a session's replies count against the outbound
    bound, past which it reads no further command), and it must go on reading until
    then, or it would wait for commands that never come while the client waits for it.
    """

    _pong_waits = False  # a ping came while writes were paused: reading pauses

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # At --log-level debug the websockets library logs every frame in and out: a
        # client sending a million small frames made a million log lines, and the node
        # spent its time writing them (a flood of pings took minutes to be held back).
        # tidings' own debug lines say what a session does; frames are not logged.
        self.conn.debug = False

    def handle_ping(self) -> None:
        super().handle_ping()
        if not self.writable.is_set() and not self._pong_waits:
            self._pong_waits = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._pong_waits:
            self._pong_waits = False
            if not self.read_paused:  # its own pause: a full queue of messages
                self.transport.resume_reading()

    async def receive(self) -> ASGIReceiveEvent:
        message = await super().receive()
        if self._pong_waits:
            self.transport.pause_reading()  # the queue drained, but a pong still waits
        return message


def _uvicorn_config(app: TidingsApp, settings: Settings, log_level: str) -> uvicorn.Config:
    config = _plain_uvicorn_config(app, settings, log_level)
    # After the config exists: creating it configures uvicorn's loggers afresh.
    for name in _PATH_LOGGERS:
        path_logger = logging.getLogger(name)
        if not any(isinstance(f, TokenRedaction) for f in path_logger.filters):
            path_logger.addFilter(TokenRedaction())
    return config


def _plain_uvicorn_config(app: TidingsApp, settings: Settings, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        AccessLogMiddleware(app) if settings.access_log else app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=log_level,
        http=_BoundedPipelineProtocol,
        ws=_PausingWebSocketProtocol,
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_TIMEOUT_S,
        ws_max_size=settings.max_ws_message_bytes,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 1,
        server_header=False,
        access_log=False,  # uvicorn's would print ?token= (tidings' own redacts it)
    )


def run_node(settings: Settings, log_level: str, listener: socket.socket | None = None) -> None:
    """Serve one node in this process until SIGTERM/SIGINT, on the configured backend.

    Raises:
        ListenError: the address cannot be bound (checked before anything starts).
        ConfigError: the broker cannot be made (see ``create_broker``).
    """
    if listener is None:
        listener = bind_listener(settings.host, settings.port)
    app = TidingsApp(settings)
    host, port = listener.getsockname()[:2]
    logger.info("%s", app.about.startup_line(host, port))
    if settings.server_backend == "native":
        run_native(app, listener)
        return
    server = _DrainingServer(_uvicorn_config(app, settings, log_level), app)
    # uvicorn logs every WebSocket handshake's path, query string (?token=) included.
    logging.getLogger("uvicorn.error").addFilter(TokenRedactingFilter())
    server.run(sockets=None if listener is None else [listener])


def bind_listener(
    host: str, port: int, *, reuse_port: bool = False, listen: bool = True
) -> socket.socket:
    """Return a socket bound to ``host:port`` and, with ``listen``, listening (on the
    first address ``host`` resolves to: IPv4 unless ``host`` is an IPv6 address).

    Raises:
        ListenError: the host does not resolve, or the address cannot be bound.
    """
    # IPv4 unless the host is an IPv6 address, as uvicorn binds ("localhost" is 127.0.0.1).
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise ListenError(host, port, f"unknown host ({exc.strerror})") from None
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Each worker binds its own socket to the port; the kernel spreads connections.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listener.bind(address)
        if listen:
            listener.listen(LISTEN_BACKLOG)
    except OSError as exc:
        listener.close()
        raise ListenError(host, port, (exc.strerror or str(exc)).lower()) from None
    return listener


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this worker if the parent dies (even by SIGKILL): a worker
    must not outlive its supervisor, holding the port. Elsewhere, nothing happens."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _worker(settings: Settings, log_level: str) -> None:
    _die_with_parent()
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run_node(settings, log_level, bind_listener(settings.host, settings.port, reuse_port=True))
    except TidingsError as exc:  # one line, as the single-process command gives
        logger.error("%s", exc)
        sys.exit(exit_status_of(exc))


def run_workers(settings: Settings, log_level: str, workers: int) -> int:
    """Serve ``workers`` node processes on one port; return the worst exit code.

    Raises:
        ConfigError: several workers with a broker they cannot share.
        ListenError: the address cannot be bound.
    """
    if settings.broker in (None, "", "memory"):
        raise ConfigError(
            "--workers > 1 needs a shared broker (--broker redis://...): with the memory or "
            "sqlite broker each worker would hold its own channels"
        )
    # Bound (not listening, so it takes no connection) to fail here, once, if the port
    # is taken; each worker binds its own socket with SO_REUSEPORT.
    bind_listener(settings.host, settings.port, reuse_port=True, listen=False).close()
    context = multiprocessing.get_context("spawn")
    # Each worker is a node of its own (presence, node-to-node commands and client ids
    # tell nodes apart by id): worker n is ``<node_id>-<n>``.
    processes = [
        context.Process(
            target=_worker,
            args=(replace(settings, node_id=f"{settings.node_id}-{n}"), log_level),
            name=f"tidings-worker-{n}",
        )
        for n in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    logger.info("started %d workers on %s:%d", workers, settings.host, settings.port)
    for process in processes:
        process.join()
    return max((process.exitcode or 0) for process in processes)
