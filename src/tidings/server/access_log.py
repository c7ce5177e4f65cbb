"""The access log (``--access-log``): one line per request on the ``tidings.access``
logger: the client's address, method, path and query (``token=`` redacted), status,
and how long the answer took.

I/O: logging. ``AccessLogMiddleware`` wraps the ASGI application (both backends run
every request through it); the native server's two fast paths, which answer without
the application (``GET /poll`` from the watches, ``POST /api/publish``), call
``AccessLog.request`` themselves. A WebSocket is logged when its handshake is answered
(101, or 403), an SSE stream when it ends. uvicorn's own access log stays off: it
would print tokens in query strings; ``TokenRedactingFilter`` takes them out of the
lines uvicorn logs for every WebSocket handshake.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Final
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.transports.refusals import Peer, peer_text

logger = logging.getLogger("tidings.access")

REDACTED: Final = "[redacted]"
# Query parameters that carry credentials (docs/protocol.md §4, §5: ?token=).
SECRET_PARAMETERS: Final = frozenset({"token"})
_TOKEN_IN_TEXT: Final = re.compile(r"(?<![A-Za-z0-9_])(token=)[^&\s\"']+")


def redacted_target(path: str, query: bytes | str) -> str:
    """Return ``path?query`` with the values of credential parameters replaced."""
    text = query.decode("latin-1") if isinstance(query, bytes) else query
    if not text:
        return path
    if "token=" not in text:
        return f"{path}?{text}"
    pairs = [
        (name, REDACTED if name in SECRET_PARAMETERS else value)
        for name, value in parse_qsl(text, keep_blank_values=True)
    ]
    return f"{path}?{urlencode(pairs, safe=':*[]')}"


class TokenRedactingFilter(logging.Filter):
    """Replaces ``token=<value>`` in a record's arguments (a logged URL) by ``token=[redacted]``."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token=" in a for a in args):
            record.args = tuple(
                _TOKEN_IN_TEXT.sub(rf"\1{REDACTED}", a) if isinstance(a, str) else a for a in args
            )
        return True


class AccessLog:
    """Writes access-log lines."""

    __slots__ = ()

    def request(
        self,
        peer: Peer,
        method: str,
        path: str,
        query: bytes | str,
        *,
        status: int,
        started_s: float,
    ) -> None:
        """Log one answered request (``started_s``: its ``time.perf_counter()`` start)."""
        logger.info(
            '%s "%s %s" %d %.1fms',
            peer_text(peer),
            method,
            redacted_target(path, query),
            status,
            (time.perf_counter() - started_s) * 1000,
        )


class AccessLogMiddleware:
    """An ASGI application logging each request of the one it wraps."""

    __slots__ = ("_app", "_log")

    def __init__(self, app: ASGIApp, log: AccessLog | None = None) -> None:
        self._app = app
        self._log = log or AccessLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        started_s = time.perf_counter()
        status = 0
        logged = False
        method = scope.get("method", "GET")

        def log(code: int) -> None:
            nonlocal logged
            if not logged:
                logged = True
                peer = scope.get("client")
                query = scope.get("query_string", b"")
                self._log.request(
                    peer, method, scope["path"], query, status=code, started_s=started_s
                )

        async def logging_send(message: Message) -> None:
            nonlocal status
            event = message["type"]
            if event == "http.response.start":
                status = message["status"]
            elif event == "websocket.accept":
                log(101)
            elif event == "websocket.close":
                log(403)  # closed before being accepted: the handshake is refused
            await send(message)

        try:
            await self._app(scope, receive, logging_send)
        finally:
            log(status or 500)
