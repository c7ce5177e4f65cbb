"""The WebSocket side of an upgraded native connection: frames in, ASGI events, frames out.

I/O: writes to the connection's transport. ``NativeWebSocket`` answers the opening
handshake (RFC 6455 §4.2) when the app accepts, turns the client's frames into ASGI
``websocket.receive`` events for the app's one handler task, answers pings, and runs
the closing handshake. It is also the connection's direct ``Outbound``: a reply or push
becomes one text frame written to the socket at once, and the frame of a publication
shared by many connections is built once (``SharedFrames``) — no writer task, no
queue, no future per delivery.

Theory of operation
-------------------
States: ``CONNECTING`` (handshake read, app not yet answered), ``OPEN``, ``CLOSING``
(our close frame sent, waiting for the client's, bounded by ``CLOSE_TIMEOUT_S``),
``CLOSED``. The app learns of the end through ``websocket.disconnect`` from
``receive``, always exactly once, after every message the client sent before it.
Reading pauses while the app has ``MAX_INBOX`` messages unread, so a flooding client
is held back by TCP instead of by our memory. A client that does not read what we
write (the transport paused writing) is not held back for that alone: the app bounds
what it writes (tidings' sessions count their replies against the outbound bound and
read no further command past it; a plain ASGI ``send`` waits for the transport), and
it must go on reading until it gets there, or it would wait for input that never
comes while the client waits for it. Pings are the one thing answered here, not by
the app: one received while writing is paused is owed one pong, to the latest (RFC
6455 §5.5.3), and reading pauses until writing resumes and the pong is sent, so a
ping flood is held back by TCP too. While writing is paused, frames are held
here (``_held``) instead of in the transport: when the client is cut as a slow
consumer, what it has not been sent yet is dropped and its goodbye (the ``disconnect``
push and the close frame) is next in line, behind only what the transport and the
kernel already hold. Liveness: the server's ping timer sends a ping frame to every
open connection each interval; one that sent nothing back by the next tick is dropped
(``check_alive``).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import logging
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from tidings.server.native.frames import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    Control,
    FrameError,
    FrameParser,
    Message,
    close_frame,
    frame,
    parse_close,
    text_frame,
)
from tidings.server.native.port import ConnectionPort
from tidings.server.native.request import Request
from tidings.server.native.response import SharedFrames

if TYPE_CHECKING:
    from tidings.server.native.server import NativeServer

logger = logging.getLogger(__name__)

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_TIMEOUT_S: Final = 5.0
MAX_INBOX: Final = 32
CLOSE_ABNORMAL: Final = 1006
# A send is held (``wait_sent``) while the transport has more than this unsent.
_HIGH_WATER_BYTES: Final = 256 * 1024

_text_frames: Final = SharedFrames(lambda data: frame(0x1, data))


class State(enum.Enum):
    """Where the connection is in its life."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


def accept_key(key: bytes) -> bytes:
    """Return ``Sec-WebSocket-Accept`` for a client's ``Sec-WebSocket-Key``."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


@dataclass(frozen=True, slots=True)
class HandshakeRefusal:
    """Why a request is not a valid opening handshake, as the HTTP answer to give."""

    message: str
    status: HTTPStatus = HTTPStatus.BAD_REQUEST
    headers: Mapping[str, str] = field(default_factory=dict)


def handshake_problem(request: Request) -> HandshakeRefusal | None:
    """Return why ``request`` is not a valid opening handshake (RFC 6455 §4.2.1), or
    ``None`` if it is."""
    if request.method != "GET":
        return HandshakeRefusal("a WebSocket handshake is a GET")
    if request.http_version == "1.0":
        return HandshakeRefusal("a WebSocket handshake needs HTTP/1.1")
    # Connection is a list, and may be split over several header lines.
    connection = b",".join(request.header_values(b"connection")).lower()
    if b"upgrade" not in [part.strip() for part in connection.split(b",")]:
        return HandshakeRefusal("Connection must include upgrade")
    if request.header_values(b"sec-websocket-version") != [b"13"]:
        return HandshakeRefusal(
            "Sec-WebSocket-Version must be 13",
            HTTPStatus.UPGRADE_REQUIRED,
            {"sec-websocket-version": "13"},
        )
    keys = request.header_values(b"sec-websocket-key")
    if len(keys) != 1:
        return HandshakeRefusal("give exactly one Sec-WebSocket-Key")
    try:
        if len(base64.b64decode(keys[0], validate=True)) != 16:
            return HandshakeRefusal("Sec-WebSocket-Key must be 16 bytes, base64")
    except ValueError:
        return HandshakeRefusal("Sec-WebSocket-Key must be 16 bytes, base64")
    return None


class NativeWebSocket:
    """One upgraded connection; see the module docstring."""

    __slots__ = (
        "_close_code",
        "_close_timer",
        "_closed",
        "_conn",
        "_disconnect_sent",
        "_handler",
        "_held",
        "_held_bytes",
        "_inbox",
        "_open_transport",
        "_parser",
        "_paused",
        "_pong",
        "_request",
        "_server",
        "_waiter",
        "alive",
        "state",
    )

    def __init__(self, conn: ConnectionPort, request: Request, server: NativeServer) -> None:
        self._conn = conn
        self._request: Request | None = request
        self._server = server
        self._parser = FrameParser(server.max_message_bytes)
        # A list, not a deque: an empty deque allocates a block, and most connections
        # hold nothing unread most of the time.
        self._inbox: list[dict[str, Any]] = []
        self._waiter: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        self._close_code = CLOSE_ABNORMAL
        self._disconnect_sent = False
        self._paused = False
        # Frames written while the transport's buffer is full (made on the first: most
        # connections never need it), and the one pong owed.
        self._held: list[bytes] | None = None
        self._held_bytes = 0
        self._pong: bytes | None = None
        self._handler: asyncio.Task[None] | None = None
        self.state = State.CONNECTING
        self._open_transport: asyncio.Transport | None = None  # set while OPEN: pushes go here
        self.alive = True  # heard from since the last ping

    # -- from the HTTP connection ------------------------------------------------------

    def start(self, rest: bytes) -> None:
        """Run the app on the handshake, then parse ``rest`` (bytes after the head)."""
        request = self._request
        assert request is not None
        problem = handshake_problem(request)
        if problem is not None:
            self._refuse(problem.status, problem.message, problem.headers)
            return
        self._inbox.append({"type": "websocket.connect"})
        scope = self._conn.websocket_scope(request, self._outbound)
        self._handler = asyncio.get_running_loop().create_task(self._run_app(scope))
        if rest:
            self.receive_data(rest)

    async def _run_app(self, scope: dict[str, Any]) -> None:
        try:
            await self._server.asgi(scope, self.receive, self.send)
        except Exception:
            logger.exception("the application failed on a WebSocket connection")
            if self.state is State.CONNECTING:
                self._refuse(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error")
            else:
                self._start_close(1011, "internal error")
        finally:
            self._handler = None
        if self.state is State.CONNECTING:
            self._refuse(HTTPStatus.FORBIDDEN, "the application refused the connection")
        elif self.state is State.OPEN:
            self._start_close(1000, "")

    def receive_data(self, data: bytes) -> None:
        """Parse the client's bytes and act on each frame."""
        if self.state is State.CLOSED:
            return
        self.alive = True
        parser = self._parser
        try:
            parser.receive_data(data)
        except FrameError as error:
            self._act_on(parser.events())
            self._fail(error.code, error.reason)
            return
        self._act_on(parser.events())

    def connection_lost(self) -> None:
        """The TCP connection ended."""
        self._enter(State.CLOSED)
        self._server.websockets.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._tell_disconnect()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)

    def check_alive(self) -> bool:
        """Send a ping if the client answered the last one; return whether it did."""
        if self.state is not State.OPEN:
            return True
        if not self.alive:
            logger.debug("WebSocket client did not answer a ping; dropping it")
            self._conn.abort()
            return False
        self.alive = False
        self._write(frame(OP_PING, b""))
        return True

    @property
    def inbox_full(self) -> bool:
        """Whether the app has so many messages unread that reading pauses."""
        return self._paused

    @property
    def owes_pong(self) -> bool:
        """Whether a ping came while writing was paused: reading pauses until its pong
        is sent (see the module docstring)."""
        return self._pong is not None

    def writing_paused(self) -> None:
        """The transport's buffer is full: hold frames here from now on."""
        self._open_transport = None

    def writing_resumed(self) -> None:
        """The transport takes writes again: send the pong owed, then what was held."""
        transport = self._conn.transport
        if transport is None or self._conn.closed or transport.is_closing():
            return  # closed meanwhile (a protocol error, an abort): nothing more to say
        pong, self._pong = self._pong, None
        if pong is not None and self.state is State.OPEN:
            transport.write(frame(OP_PONG, pong))
        if self._held:
            held, self._held = self._held, None
            self._held_bytes = 0
            transport.write(b"".join(held))
        if self.state is State.OPEN and not self._conn.is_write_paused:
            self._open_transport = transport

    def _enter(self, state: State) -> None:
        self.state = state
        open_ = state is State.OPEN and not self._conn.is_write_paused
        self._open_transport = self._conn.transport if open_ else None

    # -- frames ----------------------------------------------------------------------------

    def _act_on(self, events: list[Message | Control]) -> None:
        for event in events:
            if isinstance(event, Message):
                if self.state is State.OPEN:
                    self._deliver(event)
                continue
            if event.opcode == OP_PING:
                if self.state is not State.OPEN:
                    continue
                if self._conn.is_write_paused:
                    owed = self._pong is not None
                    self._pong = event.payload  # one pong, to the latest ping (§5.5.3)
                    if not owed:
                        self._conn.update_reading()  # no further ping until it is sent
                else:
                    self._write(frame(OP_PONG, event.payload))
            elif event.opcode == OP_CLOSE:
                self._receive_close(event.payload)
                return

    def _deliver(self, message: Message) -> None:
        if message.text is not None:
            self._inbox.append({"type": "websocket.receive", "text": message.text})
        else:
            self._inbox.append({"type": "websocket.receive", "bytes": message.data})
        self._wake()
        if len(self._inbox) >= MAX_INBOX and not self._paused:
            self._paused = True
            self._conn.update_reading()

    def _receive_close(self, payload: bytes) -> None:
        try:
            code, _reason = parse_close(payload)
        except FrameError as error:
            self._fail(error.code, error.reason)
            return
        if self.state is State.OPEN:
            # Echo the code (RFC 6455 §5.5.1); 1005 means none was given.
            self._write(close_frame(1000) if code == 1005 else close_frame(code))
        self._close_code = code
        self._enter(State.CLOSED)
        self._tell_disconnect()
        self._conn.close()

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: close with ``code`` at once."""
        logger.debug("WebSocket protocol error: %s", reason)
        if self.state is State.OPEN:
            self._write(close_frame(code, reason))
        self._close_code = code
        self._enter(State.CLOSED)
        self._tell_disconnect()
        self._conn.close()

    def _start_close(self, code: int, reason: str) -> None:
        """Send our close frame; the client's answer (or a time-out) ends the connection."""
        if self.state is not State.OPEN:
            return
        self._enter(State.CLOSING)
        self._close_code = code
        self._write(close_frame(code, reason))
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self._conn.abort)

    def _write(self, data: bytes) -> None:
        conn = self._conn
        transport = conn.transport
        if transport is None or conn.closed:
            return
        if conn.is_write_paused:
            self._hold(data)
        else:
            transport.write(data)

    def _hold(self, data: bytes) -> None:
        if self._held is None:
            self._held = []
        self._held.append(data)
        self._held_bytes += len(data)

    def _refuse(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._enter(State.CLOSED)
        self._conn.refuse_upgrade(status, message, headers)

    # -- ASGI -------------------------------------------------------------------------------

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: connect, the client's messages, then one disconnect."""
        while not self._inbox:
            if self._disconnect_sent:
                return {"type": "websocket.disconnect", "code": self._close_code}
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        message = self._inbox.pop(0)
        if self._paused and len(self._inbox) < MAX_INBOX // 2:
            self._paused = False
            self._conn.update_reading()
        return message

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _tell_disconnect(self) -> None:
        if not self._disconnect_sent:
            self._disconnect_sent = True
            self._inbox.append({"type": "websocket.disconnect", "code": self._close_code})
            self._wake()

    async def send(self, message: MutableMapping[str, Any]) -> None:
        """ASGI ``send``: accept, send, close."""
        kind = message["type"]
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.send":
            if self.state is not State.OPEN:
                return
            text = message.get("text")
            if text is not None:
                self._write(text_frame(text))
            else:
                self._write(frame(0x2, message.get("bytes") or b""))
            await self._conn.drain()
        elif kind == "websocket.close":
            if self.state is State.CONNECTING:
                self._refuse(HTTPStatus.FORBIDDEN, "the application refused the connection")
            else:
                self._start_close(int(message.get("code", 1000)), message.get("reason") or "")
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _accept(self, message: MutableMapping[str, Any]) -> None:
        request = self._request
        if self.state is not State.CONNECTING or request is None:
            raise RuntimeError("websocket.accept sent twice")
        key = request.header(b"sec-websocket-key") or b""
        lines = [
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n",
            b"sec-websocket-accept: %b\r\n" % accept_key(key),
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            lines.append(b"sec-websocket-protocol: %b\r\n" % subprotocol.encode())
        for name, value in message.get("headers", []):
            lines.append(b"%b: %b\r\n" % (name, value))
        lines.append(b"\r\n")
        self._write(b"".join(lines))
        self._enter(State.OPEN)
        self._request = None  # the handshake's headers are no longer needed
        self._server.websockets.add(self)

    # -- the direct Outbound ------------------------------------------------------------------

    def _outbound(self) -> NativeWebSocket:
        return self

    @property
    def pending_bytes(self) -> int:
        transport = self._conn.transport
        if transport is None or self.state is not State.OPEN:
            return 0
        return transport.get_write_buffer_size() + self._held_bytes

    def put(self, chunk: str) -> None:
        """Write ``chunk`` as one text frame (Outbound)."""
        transport = self._open_transport  # the fan-out path: one attribute, one test
        if transport is not None:
            transport.write(_text_frames.of(chunk))
        elif self.state is State.OPEN:
            self._hold(_text_frames.of(chunk))  # writing is paused

    def discard_pending(self) -> None:
        """Drop the frames held while writing is paused (Outbound): a slow consumer's
        goodbye then comes next. What the transport holds already cannot be taken back."""
        self._held = None
        self._held_bytes = 0

    def finish(self, goodbye: str, code: int, reason: str) -> None:
        """Send ``goodbye`` and close with ``code`` (Outbound)."""
        self.put(goodbye)
        self._start_close(code, reason)

    def end_silently(self) -> None:
        """End without a word (Outbound): the client is gone."""
        if self.state is not State.CLOSED:
            self._conn.abort()

    async def wait_sent(self) -> None:
        """Hold the reader while a large reply is still mostly unsent (Outbound)."""
        while self.pending_bytes > _HIGH_WATER_BYTES and self.state is State.OPEN:
            await self._conn.drain()
            if not self._conn.is_write_paused:
                return

    async def run(self) -> None:
        """Return once the connection has closed (Outbound)."""
        if self.state is State.CLOSED:
            return
        if self._closed is None:
            self._closed = asyncio.get_running_loop().create_future()
        await self._closed

    async def stop(self, *, client_left: bool) -> None:
        """Let a closing handshake finish (it is bounded by its own timer) (Outbound)."""
        if client_left or self.state is State.CLOSED:
            return
        await self.run()
