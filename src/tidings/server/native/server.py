"""The native server: tidings' own HTTP/1.1 and WebSocket server for ``tidings serve``.

I/O: listens on a socket, runs the node's ASGI application (``TidingsApp``) for every
request, and owns the process's signals while it serves. Why it exists beside uvicorn:
under ASGI every frame to every subscriber is an awaited ``send`` through a writer task
per connection; here the app's transports write pre-framed bytes straight to each
socket (``tidings.direct_outbound``), which is most of the cost of a delivery
(benchmarks/RESULTS.md). The app is the same object either way, so every route,
setting and test applies to both backends.

Lifecycle: start the app (broker, heartbeats), listen, log ``listening on
http://HOST:PORT``; on SIGTERM or SIGINT drain the app (every client told to reconnect,
bounded by ``shutdown_timeout``), stop listening, close idle connections, give
requests in flight the rest of the time-out, stop the app, and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from typing import Final

from starlette.types import ASGIApp

from tidings.server.access_log import AccessLog, AccessLogMiddleware
from tidings.server.app import FRAME_OVERHEAD_BYTES, TidingsApp
from tidings.server.native.http import HttpConnection
from tidings.server.native.websocket import NativeWebSocket
from tidings.transports.deadlines import Deadlines

logger = logging.getLogger(__name__)

LISTEN_BACKLOG: Final = 4096
# Keep-alive and linger time-outs end up to this much late, sharing timers.
DEADLINE_GRAIN_S: Final = 0.25
WS_PING_INTERVAL_S: Final = 20.0
# Frames the app would refuse (4009) still parse: the app's own limit applies below this.
FRAME_LIMIT_FACTOR: Final = 4


class NativeServer:
    """Serves one ``TidingsApp``; see the module docstring."""

    def __init__(self, app: TidingsApp, *, ping_interval_s: float = WS_PING_INTERVAL_S) -> None:
        self.app = app
        settings = app.settings
        # What requests run through: the app, or the app inside the access log.
        self.access_log = AccessLog() if settings.access_log else None
        self.asgi: ASGIApp = AccessLogMiddleware(app, self.access_log) if self.access_log else app
        self.max_message_bytes = (settings.max_data_bytes + FRAME_OVERHEAD_BYTES) * (
            FRAME_LIMIT_FACTOR
        )
        self.native_poll = app.native_poll
        self.deadlines = Deadlines(DEADLINE_GRAIN_S)
        self.connections: set[HttpConnection] = set()
        self._no_connections = asyncio.Event()
        self.websockets: set[NativeWebSocket] = set()
        self.stopping = False
        self._ping_interval_s = ping_interval_s
        self._stop = asyncio.Event()

    def connection_opened(self, conn: HttpConnection) -> None:
        """Count a new client connection."""
        self.connections.add(conn)
        self._no_connections.clear()

    def connection_closed(self, conn: HttpConnection) -> None:
        """Forget a client connection that ended."""
        self.connections.discard(conn)
        if not self.connections:
            self._no_connections.set()

    def request_stop(self) -> None:
        """Begin the graceful stop (what SIGTERM and SIGINT do)."""
        self._stop.set()

    async def serve(
        self, listener: socket.socket | None = None, *, handle_signals: bool = True
    ) -> None:
        """Serve until ``request_stop`` (or, with ``handle_signals``, SIGTERM or SIGINT),
        then stop gracefully."""
        loop = asyncio.get_running_loop()
        settings = self.app.settings
        await self.app.start()
        try:
            server = await self._listen(loop, listener)
        except BaseException:
            await self.app.stop()
            raise
        host, port = server.sockets[0].getsockname()[:2]
        logger.info("listening on http://%s:%d", host, port)
        signals = (signal.SIGTERM, signal.SIGINT) if handle_signals else ()
        for signum in signals:
            loop.add_signal_handler(signum, self.request_stop)
        pinger = loop.create_task(self._ping_forever())
        try:
            await self._stop.wait()
            logger.info("stopping: draining clients")
            await self.app.drain()
            self.stopping = True
            server.close()
            for conn in list(self.connections):
                if conn.is_idle:
                    conn.close()
            await self._wait_connections(settings.shutdown_timeout_s)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
            for signum in signals:
                loop.remove_signal_handler(signum)
            for conn in list(self.connections):
                conn.abort()
            await self.app.stop()

    async def _listen(
        self, loop: asyncio.AbstractEventLoop, listener: socket.socket | None
    ) -> asyncio.Server:
        settings = self.app.settings
        if listener is not None:
            return await loop.create_server(
                lambda: HttpConnection(self), sock=listener, backlog=LISTEN_BACKLOG
            )
        return await loop.create_server(
            lambda: HttpConnection(self),
            host=settings.host,
            port=settings.port,
            backlog=LISTEN_BACKLOG,
            reuse_address=True,
        )

    async def _wait_connections(self, timeout_s: float) -> None:
        """Wait (bounded) until every connection has closed."""
        if not self.connections:
            return
        self._no_connections.clear()
        try:
            await asyncio.wait_for(self._no_connections.wait(), timeout_s)
        except TimeoutError:
            logger.warning("%d connections still open at shutdown", len(self.connections))

    async def _ping_forever(self) -> None:
        """One timer pings every WebSocket and drops those that did not answer the last."""
        while True:
            await asyncio.sleep(self._ping_interval_s)
            for websocket in list(self.websockets):
                try:
                    websocket.check_alive()
                except Exception:
                    logger.exception("WebSocket ping failed")


def run_native(app: TidingsApp, listener: socket.socket | None = None) -> None:
    """Serve ``app`` on uvloop until SIGTERM/SIGINT, in this thread."""
    import uvloop  # noqa: PLC0415 (a dependency of the uvicorn[standard] extra)

    uvloop.run(NativeServer(app).serve(listener))
