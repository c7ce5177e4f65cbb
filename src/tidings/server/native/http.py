"""One client TCP connection of the native server: HTTP/1.1 in, the ASGI app, bytes out.

I/O: an ``asyncio.Protocol`` on the event loop's transport, requests parsed by
``httptools``. A complete request joins the queue of pipelined requests, which
``serving.py`` serves in turn (the ASGI application in a task, a *door* at once, or a
run of *batched* requests in one task), so responses leave in request order. An
upgrade to WebSocket hands the connection to ``websocket.NativeWebSocket``.

Theory of operation
-------------------
States of a connection: reading requests (``_cycle`` is ``None``, or what serves the
oldest request: a task or a ``PollExchange``), upgraded (``_websocket`` set: every byte
goes to it), or closed. Between requests the keep-alive deadline runs
(``keep_alive.py``); serving a request, and what follows it, is ``serving.py``'s.

Answers leave in request order, refusals included (RFC 9112 §9.3.2). When the parser
meets bytes it cannot take (a malformed request, a head or body over its limit), the
requests read whole before them are still served and answered; the refusal is written
after the last of them, and the connection then closes (``_refusal``). The refused
request itself is never run. Bytes after a request that ends the connection
(``Connection: close``, HTTP/1.0) are dropped unanswered: nothing after it is a request
(RFC 9112 §9.6).

Memory stays bounded whatever the client does (docs/protocol.md §2.5). Reading pauses
(``update_reading``) while the transport's write buffer is full (the client does not
read its answers; on an upgraded connection only while a pong is owed, see
``websocket.py``), while more than ``MAX_PIPELINED`` requests wait, and while more than
``MAX_WAITING_BYTES`` of input wait behind a request in flight (an SSE stream or a long
poll holds its connection's later requests): the client is held back by TCP, not by our
memory. While writing is paused no further pipelined request is started either: its
answer would only pile up in the buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from tidings.server.native import keep_alive, serving
from tidings.server.native.poll_exchange import PollExchange
from tidings.server.native.request import (
    RefusedRequest,
    Request,
    check_head,
    is_unknown_method,
)
from tidings.server.native.response import ResponseWriter, refusal_response
from tidings.server.native.scope import websocket_scope
from tidings.server.native.serving import MAX_PIPELINED
from tidings.transports.deadlines import Deadline
from tidings.transports.outbound import Outbound

if TYPE_CHECKING:
    from tidings.server.native.server import NativeServer
    from tidings.server.native.websocket import NativeWebSocket

MAX_BODY_BYTES: Final = 8 * 1024 * 1024
MAX_HEAD_BYTES: Final = 64 * 1024
# The request target: room for a poll of 64 channels of 255 characters and a cursor.
MAX_TARGET_BYTES: Final = 32 * 1024
# Input read ahead (heads and bodies) behind the request being served before reading
# pauses: an SSE stream or a long poll must not hold megabytes of pipelined bodies.
MAX_WAITING_BYTES: Final = 64 * 1024
# How long a refused request's connection keeps reading what the client still sends.
REFUSED_LINGER_S: Final = 2.0


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
        "_queued_bytes",
        "_reading_paused",
        "_refusal",
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
        # Requests parsed, waiting to be served (the first is being served), and their size.
        # A list, not a deque: an empty deque allocates a block per idle connection.
        self._requests: list[Request] = []
        self._queued_bytes = 0
        # Serving the oldest request: an ASGI task, or a poll answered without one.
        self._cycle: asyncio.Task[None] | PollExchange | None = None
        self._response: ResponseWriter | None = None
        self._keep_alive_timer: Deadline | None = None
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._websocket: NativeWebSocket | None = None
        # The answer to input the parser refused, written once the requests before it
        # are answered; from then on nothing more is parsed.
        self._refusal: RefusedRequest | None = None
        self._refused = False  # the refusal is written: what follows is read and dropped
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
        keep_alive.arm(self)

    def data_received(self, data: bytes) -> None:
        if self._websocket is not None:
            self._websocket.receive_data(data)
            return
        parser = self._parser
        if parser is None or self._refusal is not None or self._refused:
            return  # what follows a refused or last request is read and dropped
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._start_upgrade(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            self._parser_failed(exc, data)

    def _parser_failed(self, exc: httptools.HttpParserError, data: bytes) -> None:
        """Refuse what the parser could not take, after the requests read before it."""
        # A callback's refusal reaches here wrapped by httptools.
        refused = exc.__context__ if isinstance(exc.__context__, RefusedRequest) else None
        if refused is not None:
            self._refuse(refused.status, refused.message)
        elif self._requests and not self._requests[-1].keep_alive:
            # Bytes after a request that ends the connection: not a request (RFC 9112 §9.6).
            self._parser = None
        elif isinstance(exc, httptools.HttpParserInvalidMethodError) and is_unknown_method(data):
            self._refuse(HTTPStatus.NOT_IMPLEMENTED, "this server implements no such method")
        else:
            self._refuse(HTTPStatus.BAD_REQUEST, f"malformed HTTP request: {exc}")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._server.connection_closed(self)
        keep_alive.cancel(self)
        if self._websocket is not None:
            self._websocket.connection_lost()
        if self._response is not None:
            self._response.connection_lost()
        if isinstance(self._cycle, PollExchange):
            self._cycle.connection_lost()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        # The client is not reading what it asked for: stop reading what it asks next
        # (an upgraded connection: see update_reading).
        self._write_paused = True
        self.update_reading()
        if self._websocket is not None:
            self._websocket.writing_paused()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._websocket is not None:
            self._websocket.writing_resumed()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self.update_reading()
        if self._cycle is None and self._requests and self._websocket is None:
            serving.serve_next(self)  # held back while writing was paused

    async def drain(self) -> None:
        """Return once the transport takes writes again (or the connection is gone)."""
        if not self._write_paused or self.closed:
            return
        if self._drained is None or self._drained.done():
            self._drained = self._loop.create_future()
        await self._drained

    def update_reading(self) -> None:
        """Pause or resume reading the client's bytes; see the module docstring."""
        transport = self.transport
        if transport is None or self.closed:
            return
        websocket = self._websocket
        if websocket is not None:
            # Not merely because writing is paused: a WebSocket holds its frames itself
            # and its app bounds them (its replies count against the outbound bound,
            # past which it reads no further command), so the app must go on reading
            # until then. Only pings, which the connection answers itself, hold reading
            # while writing is paused (websocket.py).
            pause = websocket.inbox_full or (self._write_paused and websocket.owes_pong)
        else:
            waiting = self._head_bytes + self._body_bytes if self._request or self._url else 0
            if self._requests:
                waiting += self._queued_bytes - self._requests[0].size
            pause = (
                self._write_paused
                or len(self._requests) > MAX_PIPELINED
                or (self._cycle is not None and waiting > MAX_WAITING_BYTES)
            )
        if pause != self._reading_paused:
            self._reading_paused = pause
            if pause:
                transport.pause_reading()
            else:
                transport.resume_reading()

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
        if len(self._url) > MAX_TARGET_BYTES:
            raise RefusedRequest(
                HTTPStatus.REQUEST_URI_TOO_LONG,
                f"request target over {MAX_TARGET_BYTES:,} bytes",
            )
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Whitespace around a field value is not part of it (RFC 9112 §5).
        self._headers.append((name.lower(), value.strip(b" \t")))
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise RefusedRequest(
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
        # Refused before its body is read (and before any 100 Continue is sent).
        check_head(request, max_body_bytes=MAX_BODY_BYTES)
        expect = request.header(b"expect")
        # Only when nothing is being answered: the interim answer must not cut into an
        # earlier request's response (the client sends the body anyway).
        idle = not self._requests and self._cycle is None
        if expect is not None and expect.lower() == b"100-continue" and idle and self.transport:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > MAX_BODY_BYTES:
            raise RefusedRequest(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY_BYTES:,} bytes"
            )
        self._body.append(body)
        if self._cycle is not None:
            self.update_reading()

    def on_message_complete(self) -> None:
        request = self._request
        assert request is not None, "httptools completes only a begun message"
        self._request = None
        self._message_started_s = None
        keep_alive.cancel(self)
        request.body = b"".join(self._body)
        request.size = self._head_bytes + self._body_bytes
        self._body = []
        self._url = b""
        self._head_bytes = self._body_bytes = 0
        if self._parser is not None and self._parser.should_upgrade():
            self._upgrade = request
            return
        self._requests.append(request)
        self._queued_bytes += request.size
        if self._cycle is None:
            serving.serve_next(self)
        else:
            self.update_reading()

    # -- serving requests (serving.py) -------------------------------------------------

    def serve_through_app(self, request: Request) -> None:
        """Serve ``request`` with the ASGI application (a door handing it back)."""
        serving.serve_through_app(self, request)

    def respond_now(
        self, request: Request, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Write a whole response to ``request`` at once (no ASGI cycle)."""
        serving.respond_now(self, request, status, headers, body)

    def websocket_scope(self, request: Request, factory: Callable[[], Outbound]) -> dict[str, Any]:
        """The ASGI scope of an upgraded request, offering ``factory`` as direct outbound."""
        return websocket_scope(request, self._local, self._client, factory)

    def _start_upgrade(self, rest: bytes) -> None:
        request = self._upgrade
        self._upgrade = None
        upgrade = (request.header(b"upgrade") or b"").lower() if request is not None else b""
        if request is None or upgrade != b"websocket":
            self._refuse(HTTPStatus.BAD_REQUEST, "only an upgrade to websocket is served")
            return
        if self._cycle is not None or self._requests:
            self._refuse(HTTPStatus.BAD_REQUEST, "an upgrade must not be pipelined")
            return
        from tidings.server.native.websocket import NativeWebSocket  # noqa: PLC0415 (a cycle)

        # From here on no HTTP is parsed: let the parser's state go.
        keep_alive.cancel(self)
        self._message_started_s = None
        self._parser = None
        self._headers = []
        self._url = b""
        self._websocket = NativeWebSocket(self, request, self._server)
        self._websocket.start(rest)

    def _refuse(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        """Answer input that cannot be served, after the requests read before it, and
        end the connection. Nothing more is parsed from here on."""
        if self.closed or self._refusal is not None or self._refused:
            return
        self._refusal = refusal = RefusedRequest(status, message, headers)
        self._parser = None
        self._request = None
        if self._cycle is None and not self._requests:
            self._write_refusal(refusal)
        # Else serving.serve_next writes it once the last request before it is answered.

    def _write_refusal(self, refusal: RefusedRequest) -> None:
        """Write a refusal and shut our side.

        The client may still be sending (a body too large): closing with unread bytes
        would make the kernel reset the connection, and the client could lose the
        answer. So the answer goes first, then our side shuts, and the rest of what
        the client sends is read and dropped until it closes, for at most
        ``REFUSED_LINGER_S``.
        """
        transport = self.transport
        self._refusal = None
        if transport is None or self.closed or self._refused or transport.is_closing():
            return
        self._refused = True
        keep_alive.cancel(self)
        transport.write(refusal_response(refusal))
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()  # read and drop, so that the close is not a reset
        if transport.can_write_eof():
            transport.write_eof()
            self._keep_alive_timer = self._server.deadlines.call_after(REFUSED_LINGER_S, self.abort)
        else:
            self.close()

    def eof_received(self) -> bool:
        """The client finished sending: let the transport close (returns ``False``)."""
        return False

    # -- what the server and the request's helpers (port.ConnectionPort) see -----------

    @property
    def is_idle(self) -> bool:
        """Whether no request is in flight and the connection is plain HTTP."""
        return self._cycle is None and self._websocket is None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def is_write_paused(self) -> bool:
        return self._write_paused

    @property
    def is_stopping(self) -> bool:
        return self._server.stopping

    def refuse_upgrade(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None
    ) -> None:
        """Answer a refused WebSocket handshake in plain HTTP, then close."""
        self._websocket = None  # the refusal is plain HTTP
        self._refuse(status, message, headers)

    def close(self) -> None:
        """Close after what is written has been sent."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        """Close at once, dropping what is not yet sent."""
        if self.transport is not None:
            self.transport.abort()
