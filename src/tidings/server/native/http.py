"""One client TCP connection of the native server: HTTP/1.1 in, the ASGI app, bytes out.

I/O: an ``asyncio.Protocol`` on the event loop's transport, requests parsed by
``httptools``. A complete request runs the ASGI application in one task (responses are
written by ``response.ResponseWriter``), except two kinds served without Starlette:
``GET /poll``, handed to the app's native poll door, which answers or parks it at once
with no task; and a run of ``POST /api/publish``, served by one task whose answers
leave in one write. Pipelined requests wait their turn, so responses leave in request
order. An upgrade to WebSocket hands the connection to ``websocket.NativeWebSocket``.

Theory of operation
-------------------
States of a connection: reading requests (``_cycle`` is ``None``, or what serves the
oldest request: a task or a ``PollExchange``), upgraded (``_websocket`` set: every byte
goes to it), or closed. A request is done when its response is complete; then the next
pipelined request is served, or the keep-alive deadline starts. A connection whose
response did not complete cleanly is closed, never reused. Reading pauses while more
than ``MAX_PIPELINED`` requests wait, so a pipelining client is held back by TCP.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from tidings.server.native.response import (
    ResponseWriter,
    clock,
    whole_responses,
)
from tidings.transports.deadlines import Deadline
from tidings.transports.outbound import DIRECT_OUTBOUND, Outbound

if TYPE_CHECKING:
    from tidings.server.native.server import NativeServer
    from tidings.server.native.websocket import NativeWebSocket

logger = logging.getLogger(__name__)

KEEP_ALIVE_TIMEOUT_S: Final = 5.0
# A request must arrive whole within this time of its first byte (against slow senders).
REQUEST_TIMEOUT_S: Final = 60.0
MAX_BODY_BYTES: Final = 8 * 1024 * 1024
MAX_HEAD_BYTES: Final = 64 * 1024
# Pipelined requests read ahead of the one being served before reading pauses.
MAX_PIPELINED: Final = 16
# How long a refused request's connection keeps reading what the client still sends.
REFUSED_LINGER_S: Final = 2.0

# One object shared by every scope: apps read it, and it costs idle connections nothing.
# (No "state" key either: this server runs no lifespan state, and ASGI makes it optional.)
_ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}


@dataclass(slots=True)
class Request:
    """A parsed request head and its whole body."""

    method: str
    http_version: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    body: bytes = b""
    received_s: float = 0.0  # time.perf_counter() when its head was parsed (access log)
    _index: dict[bytes, bytes] | None = None  # built on the first look-up

    def header(self, name: bytes) -> bytes | None:
        """Return the first value of header ``name`` (lower case), if present."""
        index = self._index
        if index is None:
            index = self._index = {}
            for key, value in self.headers:
                index.setdefault(key, value)
        return index.get(name)

    @property
    def path(self) -> str:
        """The percent-decoded path."""
        path = self.raw_path.decode("ascii", errors="replace")
        return urllib.parse.unquote(path) if "%" in path else path


class HttpConnection(asyncio.Protocol):
    """One client connection; see the module docstring."""

    # Slots: every idle connection pays for this object (DESIGN.md: idle costs memory only).
    __slots__ = (
        "_body",
        "_body_bytes",
        "_client",
        "_cycle",
        "_drained",
        "_head_bytes",
        "_headers",
        "_keep_alive_timer",
        "_local",
        "_loop",
        "_message_started_s",
        "_parser",
        "_reading_paused",
        "_refused",
        "_request",
        "_requests",
        "_response",
        "_server",
        "_upgrade",
        "_url",
        "_websocket",
        "_write_paused",
        "closed",
        "transport",
    )

    def __init__(self, server: NativeServer) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._client: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        # The request being parsed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._request: Request | None = None
        self._upgrade: Request | None = None
        # Requests parsed, waiting to be served (the first is being served).
        # A list, not a deque: an empty deque allocates a block per idle connection.
        self._requests: list[Request] = []
        # Serving the oldest request: an ASGI task, or a poll answered without one.
        self._cycle: asyncio.Task[None] | PollExchange | None = None
        self._response: ResponseWriter | None = None
        self._keep_alive_timer: Deadline | None = None
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._websocket: NativeWebSocket | None = None
        self._refused = False
        self._message_started_s: float | None = None
        self._reading_paused = False
        self.closed = False

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        # (Both uvloop and asyncio set TCP_NODELAY on TCP transports themselves.)
        self.transport = transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        self._client = (str(peer[0]), int(peer[1])) if peer else None
        self._local = (str(local[0]), int(local[1])) if local else None
        self._server.connection_opened(self)
        self._arm_keep_alive()

    def data_received(self, data: bytes) -> None:
        if self._websocket is not None:
            self._websocket.receive_data(data)
            return
        if self._refused:
            return  # what follows a refused request is read and dropped (see _refuse)
        parser = self._parser
        if parser is None:
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._start_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            # A callback's refusal reaches here wrapped by httptools.
            refused = exc.__context__ if isinstance(exc.__context__, _RefusedRequest) else None
            if refused is None:
                self._refuse(HTTPStatus.BAD_REQUEST, f"malformed HTTP request: {exc}")
            else:
                self._refuse(refused.status, refused.message)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connection_closed(self)
        self._cancel_keep_alive()
        if self._websocket is not None:
            self._websocket.connection_lost()
        if self._response is not None:
            self._response.connection_lost()
        if isinstance(self._cycle, PollExchange):
            self._cycle.connection_lost()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def drain(self) -> None:
        """Return once the transport takes writes again (or the connection is gone)."""
        if not self._write_paused or self.closed:
            return
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()
        await self._drained

    # -- httptools callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        self._message_started_s = self._loop.time()
        self._url = b""
        self._headers = []
        self._head_bytes = 0
        self._body = []
        self._body_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _RefusedRequest(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head over {MAX_HEAD_BYTES:,} bytes",
            )

    def on_headers_complete(self) -> None:
        parser = self._parser
        assert parser is not None, "only a live parser calls back"
        url = httptools.parse_url(self._url)
        version = parser.get_http_version()
        request = Request(
            method=parser.get_method().decode("ascii"),
            http_version=version,
            raw_path=url.path,
            query_string=url.query or b"",
            headers=self._headers,
            keep_alive=version != "1.0" and parser.should_keep_alive(),
            received_s=time.perf_counter(),
        )
        self._request = request
        if request.header(b"expect") == b"100-continue" and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise _RefusedRequest(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES:,} bytes"
            )
        self._body.append(body)

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None, "httptools completes only a begun message"
        self._request = None
        self._message_started_s = None
        self._cancel_keep_alive()
        request.body = b"".join(self._body)
        self._body = []
        if self._parser is not None and self._parser.should_upgrade():
            self._upgrade = request
            return
        self._requests.append(request)
        if len(self._requests) > MAX_PIPELINED and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()
        if self._cycle is None:
            self._serve_next()

    # -- serving requests --------------------------------------------------------------

    def _serve_next(self) -> None:
        if self.closed or not self._requests:
            self._cycle = None
            self._arm_keep_alive()
            return
        request = self._requests[0]
        native_poll = self._server.native_poll
        if native_poll is not None and request.raw_path == b"/poll" and request.method == "GET":
            # Answered, parked or handed back at once: most polls need no task at all.
            exchange = self._cycle = PollExchange(self, request)
            native_poll(exchange)
            return
        if _is_publish(request):
            self._cycle = self._loop.create_task(self._serve_publishes())
            return
        self._serve_through_app(request)

    async def _serve_publishes(self) -> None:
        """Serve the run of ``POST /api/publish`` at the head of the queue in one task,
        without Starlette, and write their answers together: a pipelining publisher's
        requests cost one task and one write per run, not one each."""
        publish = self._server.app.native_publish
        answers: list[bytes] = []
        request: Request | None = None
        try:
            while self._requests and _is_publish(self._requests[0]) and not self.closed:
                request = self._requests[0]
                status, headers, body = await publish(request.header, request.body, self._client)
                close = not request.keep_alive or self._server.stopping
                answers.append(whole_responses.of(status, headers, body, close=close, head=False))
                self._log_access(request, status)
                if close or len(answers) >= MAX_PIPELINED:
                    break
                del self._requests[0]
                request = None
        except Exception:
            logger.exception("the native publish failed")
            self.abort()
            return
        finally:
            if answers and self.transport is not None and not self.closed:
                self.transport.write(b"".join(answers))
        if request is not None:
            self._request_done(request, complete=True)  # the last of the run: close, or go on
            return
        self._resume_reading()
        self._cycle = None
        self._serve_next()

    def _serve_through_app(self, request: Request) -> None:
        self._cycle = self._loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        assert self.transport is not None
        response = self._response = ResponseWriter(self, request)
        try:
            await self._server.asgi(self._http_scope(request), response.receive, response.send)
        except Exception:
            logger.exception("the application failed on %s %s", request.method, request.path)
            if not response.started:
                response.write_error(HTTPStatus.INTERNAL_SERVER_ERROR)
        finally:
            self._response = None
        self._request_done(request, complete=response.complete)

    def _request_done(self, request: Request, *, complete: bool) -> None:
        """After a response: serve the next pipelined request, or close."""
        if not complete or not request.keep_alive or self._server.stopping:
            self.close()
            return
        del self._requests[0]
        self._resume_reading()
        self._serve_next()

    def _resume_reading(self) -> None:
        """Read again once the pipelined backlog is short (paused in on_message_complete)."""
        if self._reading_paused and len(self._requests) <= MAX_PIPELINED and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()

    def respond_now(
        self, request: Request, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Write a whole response to ``request`` at once (no ASGI cycle)."""
        if self.closed or self.transport is None:
            return
        close = not request.keep_alive or self._server.stopping
        wire = whole_responses.of(status, headers, body, close=close, head=request.method == "HEAD")
        self.transport.write(wire)
        self._log_access(request, status)
        self._request_done(request, complete=True)

    def _log_access(self, request: Request, status: int) -> None:
        """Log a request answered without the ASGI app (which logs its own), if asked."""
        log = self._server.access_log
        if log is not None:
            log.request(
                self._client, request.method, request.path, request.query_string,
                status=status, started_s=request.received_s,
            )  # fmt: skip

    def _http_scope(self, request: Request) -> dict[str, Any]:
        response = self._response
        assert response is not None
        return {
            "type": "http",
            "asgi": _ASGI_VERSION,
            "http_version": request.http_version,
            "server": self._local,
            "client": self._client,
            "scheme": "http",
            "method": request.method,
            "root_path": "",
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "headers": request.headers,
            "extensions": {DIRECT_OUTBOUND: response.stream_outbound},
        }

    def websocket_scope(self, request: Request, factory: Callable[[], Outbound]) -> dict[str, Any]:
        """The ASGI scope of an upgraded request, offering ``factory`` as direct outbound."""
        subprotocols = request.header(b"sec-websocket-protocol") or b""
        return {
            "type": "websocket",
            "asgi": _ASGI_VERSION,
            "http_version": request.http_version,
            "server": self._local,
            "client": self._client,
            "scheme": "ws",
            "root_path": "",
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "headers": request.headers,
            "subprotocols": [
                part.strip() for part in subprotocols.decode("latin-1").split(",") if part.strip()
            ],
            "extensions": {DIRECT_OUTBOUND: factory},
        }

    def _start_upgrade(self, rest: bytes) -> None:
        request = self._upgrade
        self._upgrade = None
        upgrade = (request.header(b"upgrade") or b"").lower() if request is not None else b""
        if request is None or upgrade != b"websocket" or self._cycle is not None:
            self._refuse(HTTPStatus.BAD_REQUEST, "only an upgrade to websocket is served")
            return
        from tidings.server.native.websocket import NativeWebSocket  # noqa: PLC0415 (a cycle)

        # From here on no HTTP is parsed: let the parser's state go.
        self._cancel_keep_alive()
        self._message_started_s = None
        self._parser = None
        self._headers = []
        self._url = b""
        self._websocket = NativeWebSocket(self, request, self._server)
        self._websocket.start(rest)

    def _refuse(self, status: HTTPStatus, message: str) -> None:
        """Answer a request that cannot be served and end the connection.

        The client may still be sending (a body too large): closing with unread bytes
        would make the kernel reset the connection, and the client could lose the
        answer. So the answer goes first, then our side shuts, and the rest of what
        the client sends is read and dropped until it closes, for at most
        ``REFUSED_LINGER_S``.
        """
        transport = self.transport
        if transport is None or self.closed or self._refused:
            return
        self._refused = True
        self._cancel_keep_alive()
        body = message.encode()
        transport.write(
            b"HTTP/1.1 %d %b\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: %d\r\nconnection: close\r\n%b\r\n%b"
            % (status.value, status.phrase.encode(), len(body), clock.date_header(), body)
        )
        if transport.can_write_eof():
            transport.write_eof()
            self._keep_alive_timer = self._server.deadlines.call_after(REFUSED_LINGER_S, self.abort)
        else:
            self.close()

    def eof_received(self) -> bool:
        """The client finished sending: let the transport close (returns ``False``)."""
        return False

    # -- keep-alive and closing ----------------------------------------------------------

    def _arm_keep_alive(self) -> None:
        if self.closed or self._websocket is not None:
            return
        if self._server.stopping:
            self.close()
            return
        self._cancel_keep_alive()
        # One timer per grain for all idle connections (deadlines.py), not one each. It
        # stays armed while a request arrives, and is cancelled once one is complete.
        self._keep_alive_timer = self._server.deadlines.call_after(
            KEEP_ALIVE_TIMEOUT_S, self._idle_too_long
        )

    def _idle_too_long(self) -> None:
        """The keep-alive deadline: close an idle connection; give a request that is
        still arriving until ``REQUEST_TIMEOUT_S`` after its first byte, then 408."""
        self._keep_alive_timer = None
        started = self._message_started_s
        if started is None:
            self.close()
            return
        remaining_s = started + REQUEST_TIMEOUT_S - self._loop.time()
        if remaining_s > 0:
            self._keep_alive_timer = self._server.deadlines.call_after(
                remaining_s, self._idle_too_long
            )
        else:
            self._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request took too long to arrive")

    def _cancel_keep_alive(self) -> None:
        if self._keep_alive_timer is not None:
            self._keep_alive_timer.cancel()
            self._keep_alive_timer = None

    @property
    def is_idle(self) -> bool:
        """Whether no request is in flight and the connection is plain HTTP."""
        return self._cycle is None and self._websocket is None

    def close(self) -> None:
        """Close after what is written has been sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is not yet sent."""
        if self.transport is not None:
            self.transport.abort()


def _is_publish(request: Request) -> bool:
    return request.method == "POST" and request.raw_path == b"/api/publish"


class PollExchange:
    """A ``GET /poll`` handed to the app's native poll door (``transports.poll.NativePoll``)."""

    __slots__ = ("_conn", "_gone", "_request")

    def __init__(self, conn: HttpConnection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._gone: Callable[[], None] | None = None

    @property
    def query_string(self) -> bytes:
        return self._request.query_string

    def header(self, name: bytes) -> bytes | None:
        return self._request.header(name)

    def respond(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self._gone = None
        self._conn.respond_now(self._request, status, headers, body)

    def fall_back(self) -> None:
        self._gone = None
        if not self._conn.closed:
            self._conn._serve_through_app(self._request)

    def on_client_gone(self, callback: Callable[[], None]) -> None:
        self._gone = callback

    def connection_lost(self) -> None:
        """The client left while the poll was parked."""
        gone, self._gone = self._gone, None
        if gone is not None:
            gone()


class _RefusedRequest(Exception):
    """Raised from a parser callback: the request is refused with ``status``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
