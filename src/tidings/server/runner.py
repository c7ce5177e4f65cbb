"""Running nodes on the native server (the default) or uvicorn: one process, or several
sharing a port (SO_REUSEPORT).

Process and socket I/O. On SIGTERM/SIGINT a node first drains its clients (each gets a
``disconnect`` with reconnect advice and a 1001 close), then uvicorn closes sockets.
Several worker processes on one port only make sense with a broker they all share
(Redis): with the memory or sqlite broker each would hold different channels.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import socket
from collections.abc import Iterator
from types import FrameType
from typing import Final

import uvicorn

from tidings.errors import ConfigError
from tidings.server.app import FRAME_OVERHEAD_BYTES, TidingsApp
from tidings.server.config import Settings
from tidings.server.native.server import run_native

logger = logging.getLogger(__name__)

WS_PING_INTERVAL_S: Final = 20.0
WS_PING_TIMEOUT_S: Final = 20.0
# uvicorn cuts frames past its own limit with 1009; ours (4009) applies below it.
UVICORN_FRAME_LIMIT_FACTOR: Final = 4
LISTEN_BACKLOG: Final = 4096
_PR_SET_PDEATHSIG: Final = 1  # from <linux/prctl.h>


class _DrainingServer(uvicorn.Server):
    """uvicorn, but on SIGTERM/SIGINT tidings tells clients first (disconnect push, 1001)."""

    def __init__(self, config: uvicorn.Config, app: TidingsApp) -> None:
        super().__init__(config)
        self._tidings = app

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if sockets:  # uvicorn says nothing when given sockets; supervisors want a line
            host, port = sockets[0].getsockname()[:2]
            logger.info("worker %d listening on http://%s:%d", os.getpid(), host, port)

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


def _uvicorn_config(app: TidingsApp, settings: Settings, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=log_level,
        ws="websockets-sansio",
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_TIMEOUT_S,
        ws_max_size=(settings.max_data_bytes + FRAME_OVERHEAD_BYTES) * UVICORN_FRAME_LIMIT_FACTOR,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 1,
        server_header=False,
    )


def run_node(settings: Settings, log_level: str, listener: socket.socket | None = None) -> None:
    """Serve one node in this process until SIGTERM/SIGINT, on the configured backend."""
    app = TidingsApp(settings)
    logger.info("%s", app.about.startup_line(settings.host, settings.port))
    if settings.server_backend == "native":
        run_native(app, listener)
        return
    server = _DrainingServer(_uvicorn_config(app, settings, log_level), app)
    server.run(sockets=None if listener is None else [listener])


def _reuse_port_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Each worker binds its own socket to the port; the kernel spreads connections.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host, port))
    listener.listen(LISTEN_BACKLOG)
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
    run_node(settings, log_level, _reuse_port_listener(settings.host, settings.port))


def run_workers(settings: Settings, log_level: str, workers: int) -> int:
    """Serve ``workers`` node processes on one port; return the worst exit code.

    Raises:
        ConfigError: several workers with a broker they cannot share.
    """
    if settings.broker in (None, "", "memory"):
        raise ConfigError(
            "--workers > 1 needs a shared broker (--broker redis://...): with the memory or "
            "sqlite broker each worker would hold its own channels"
        )
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(settings, log_level), name=f"tidings-worker-{n}")
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
