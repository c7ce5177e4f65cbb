"""Writing HTTP responses on the native server: ASGI ``send`` for one request, the
direct outbound of an SSE stream, and the bytes shared between responses. I/O: writes
to the connection's transport.

Encode once, send many, as far as HTTP goes: ``SharedFrames`` keeps the framed bytes of
the last text framed (a publication reaches every SSE stream of its channel as one
string object), and ``WholeResponses`` the bytes of the last whole response (the long
polls one publication wakes are answered with the same headers and body objects).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, MutableMapping
from email.utils import formatdate
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from tidings.core.wire import encode_json
from tidings.server.native.request import REFUSAL_CODES, RefusedRequest
from tidings.transports.outbound import Outbound

if TYPE_CHECKING:
    from tidings.server.native.port import ConnectionPort
    from tidings.server.native.request import Request

_CHUNKED_END: Final = b"0\r\n\r\n"


class SharedFrames:
    """The framed bytes of the last text framed: a publication fans out as one string
    object to every subscriber, so its frame is built once and then found by identity."""

    __slots__ = ("_frame", "_make", "_text")

    def __init__(self, make: Callable[[bytes], bytes]) -> None:
        self._make = make
        self._text: str | None = None
        self._frame = b""

    def of(self, text: str) -> bytes:
        """Return the framed bytes of ``text``."""
        if text is not self._text:
            self._frame = self._make(text.encode())
            self._text = text
        return self._frame


def chunk(data: bytes) -> bytes:
    """Return ``data`` as one chunk of a chunked HTTP/1.1 body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


_stream_chunks: Final = SharedFrames(chunk)


class WholeResponses:
    """The bytes of the last whole response written: polls woken by one publication
    are answered with the same headers and body objects, so their bytes are built
    once and then found by identity (like ``SharedFrames``)."""

    __slots__ = ("_key", "_wire")

    def __init__(self) -> None:
        self._key: tuple[object, ...] = ()
        self._wire = b""

    def of(
        self, status: int, headers: Mapping[str, str], body: bytes, *, close: bool, head: bool
    ) -> bytes:
        """Return the response's bytes (``content-length`` and ``date`` added)."""
        date = clock.date_header()
        key = (status, headers, body, close, head, date)
        if key == self._key:  # tuple equality tries identity first: cheap on a hit
            return self._wire
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, _reason(status))]
        for name, value in headers.items():
            lines.append(b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1")))
        if status != 304:
            lines.append(b"content-length: %d\r\n" % len(body))
        if close:
            lines.append(b"connection: close\r\n")
        lines.append(date)
        lines.append(b"\r\n")
        if not head:
            lines.append(body)
        self._key = key
        self._wire = b"".join(lines)
        return self._wire


whole_responses: Final = WholeResponses()


class _Clock:
    """The ``Date`` header, formatted at most once a second."""

    __slots__ = ("_header", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._header = b""

    def date_header(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._header = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._header


clock: Final = _Clock()


class ResponseWriter:
    """The ASGI ``receive`` and ``send`` of one request, and its stream outbound."""

    __slots__ = (
        "_chunked",
        "_conn",
        "_disconnected",
        "_head",
        "_request",
        "_request_sent",
        "_stream",
        "complete",
        "started",
    )

    def __init__(self, conn: ConnectionPort, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._request_sent = False
        self._disconnected: asyncio.Future[None] | None = None
        self._head: tuple[int, list[tuple[bytes, bytes]]] | None = None
        self._chunked = False
        self._stream: StreamOutbound | None = None
        self.started = False  # http.response.start received
        self.complete = False

    # -- receive -------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: the body, then ``http.disconnect`` once the response is done
        or the client left."""
        if not self._request_sent:
            self._request_sent = True
            return {"type": "http.request", "body": self._request.body, "more_body": False}
        if not self._conn.closed and not self.complete:
            if self._disconnected is None:
                self._disconnected = self._conn.loop.create_future()
            await self._disconnected
        return {"type": "http.disconnect"}

    def connection_lost(self) -> None:
        """The client is gone: a waiting ``receive`` returns ``http.disconnect``."""
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)
        if self._stream is not None:
            self._stream.end_silently()

    # -- send ----------------------------------------------------------------------------

    async def send(self, message: MutableMapping[str, Any]) -> None:
        """ASGI ``send``: ``http.response.start`` then ``http.response.body`` messages."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self.started = True
            self._head = (int(message["status"]), list(message.get("headers", [])))
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.started or self.complete:
            raise RuntimeError("http.response.body outside a response")
        if self._conn.closed:
            raise ConnectionResetError("the client closed the connection")
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        self.write_body(body, more=more)
        await self._conn.drain()

    def write_body(self, body: bytes, *, more: bool) -> None:
        """Write a body part, with the head first if it is still held."""
        transport = self._conn.transport
        assert transport is not None
        head = b""
        if self._head is not None:
            head = self._head_bytes(len(body), more)
        if self._request.method == "HEAD":
            body = b""
        elif self._chunked:
            body = (chunk(body) if body else b"") + (b"" if more else _CHUNKED_END)
        transport.write(head + body if head else body)
        if not more:
            self._finish()

    def _head_bytes(self, first_body: int, more: bool) -> bytes:
        assert self._head is not None
        status, headers = self._head
        self._head = None
        has_length = any(name.lower() == b"content-length" for name, _ in headers)
        lines = [b"HTTP/1.1 %d %b\r\n" % (status, _reason(status))]
        for name, value in headers:
            lines.append(b"%b: %b\r\n" % (name, value))
        if not has_length and status >= 200 and status not in (204, 304):
            if more:
                if self._request.http_version == "1.1":
                    self._chunked = True
                    lines.append(b"transfer-encoding: chunked\r\n")
                else:
                    self._request.keep_alive = False  # HTTP/1.0: the close ends the body
            else:
                lines.append(b"content-length: %d\r\n" % first_body)
        if not self._request.keep_alive or self._conn.is_stopping:
            lines.append(b"connection: close\r\n")
        lines.append(clock.date_header())
        lines.append(b"\r\n")
        return b"".join(lines)

    def _finish(self) -> None:
        self.complete = True
        if self._disconnected is not None and not self._disconnected.done():
            self._disconnected.set_result(None)

    def write_error(self, status: HTTPStatus) -> None:
        """Answer with ``status`` and a short text body (the app failed before answering)."""
        body = status.phrase.encode()
        self._head = (status.value, [(b"content-type", b"text/plain; charset=utf-8")])
        self.started = True
        self._request.keep_alive = False
        self.write_body(body, more=False)

    # -- the direct outbound -----------------------------------------------------------------

    def stream_outbound(self) -> Outbound:
        """Return the outbound of this response's stream (offered as a scope extension)."""
        if self._stream is None:
            self._stream = StreamOutbound(self, self._conn)
        return self._stream


_REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"")


class StreamOutbound:
    """An SSE stream's outbound: each chunk written to the socket at once (chunked HTTP).

    The stream's response head must have been sent with ``http.response.start`` before
    the first ``put``; it leaves with the first chunk.
    """

    __slots__ = ("_conn", "_ended", "_response")

    def __init__(self, response: ResponseWriter, conn: ConnectionPort) -> None:
        self._response = response
        self._conn = conn
        self._ended: asyncio.Future[None] | None = None

    @property
    def pending_bytes(self) -> int:
        transport = self._conn.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    def put(self, chunk_text: str) -> None:
        response = self._response
        if response.complete or self._conn.closed:
            return
        if response._head is not None:
            response.write_body(b"", more=True)  # the head, choosing chunked encoding
        if response._request.method == "HEAD":
            return  # headers only (RFC 9110 §9.3.2)
        transport = self._conn.transport
        assert transport is not None
        if response._chunked:
            transport.write(_stream_chunks.of(chunk_text))
        else:
            transport.write(chunk_text.encode())

    def discard_pending(self) -> None:
        """Written bytes are the kernel's and the transport's now: nothing to drop."""

    def finish(self, goodbye: str, code: int, reason: str) -> None:
        response = self._response
        self.put(goodbye)
        if not response.complete and not self._conn.closed:
            response._request.keep_alive = False
            response.write_body(b"", more=False)
        self.end_silently()

    def end_silently(self) -> None:
        if self._ended is None:
            self._ended = self._conn.loop.create_future()
        if not self._ended.done():
            self._ended.set_result(None)

    async def wait_sent(self) -> None:
        await self._conn.drain()

    async def run(self) -> None:
        if self._ended is None:
            self._ended = self._conn.loop.create_future()
        if self._conn.closed:
            return
        await self._ended

    async def stop(self, *, client_left: bool) -> None:
        """Nothing to flush here: the transport sends what it holds, then closes."""


def refusal_response(refusal: RefusedRequest) -> bytes:
    """The whole answer to input the connection refuses (it closes after it): the
    refusal's status, its error as JSON (docs/protocol.md §7) and its extra headers."""
    status = refusal.status
    body = encode_json(
        {"error": {"code": REFUSAL_CODES.get(status, "bad_request"), "message": refusal.message}}
    )
    extra = b"".join(
        b"%b: %b\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
        for name, value in refusal.headers.items()
    )
    return (
        b"HTTP/1.1 %d %b\r\ncontent-type: application/json\r\n%b"
        b"content-length: %d\r\nconnection: close\r\n%b\r\n%b"
        % (status.value, status.phrase.encode(), extra, len(body), clock.date_header(), body)
    )
