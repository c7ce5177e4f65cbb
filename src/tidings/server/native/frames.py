"""WebSocket framing (RFC 6455 §5) for the native server. Pure: bytes in, frames out.

A server's frames are never masked, so a frame is a two-to-ten-byte header and the
payload: ``text_frame`` builds one, and the same bytes serve every recipient of a
publication. ``FrameParser`` is the sans-I/O reader of a client's frames: feed it
bytes with ``receive_data``, then take complete messages and control frames from
``events()``. It enforces what a server must: client frames are masked, no reserved
bits (no extension is negotiated), control frames short and unfragmented, fragments in
order, text valid UTF-8, and a bound on a message's size. A violation raises
``FrameError`` carrying the close code to answer with.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

CLOSE_NO_STATUS: Final = 1005
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_INVALID_DATA: Final = 1007
CLOSE_TOO_BIG: Final = 1009
MAX_CONTROL_PAYLOAD: Final = 125
_MAX_REASON_BYTES: Final = 123  # a close payload is the 2-byte code and the reason

_DATA_OPCODES: Final = (OP_CONTINUATION, OP_TEXT, OP_BINARY)
_CONTROL_OPCODES: Final = (OP_CLOSE, OP_PING, OP_PONG)


class FrameError(Exception):
    """The client broke the framing rules; close with ``code``."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{reason} (close {code})")
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message: ``text`` for a text message, else ``data``."""

    text: str | None
    data: bytes | None


@dataclass(frozen=True, slots=True)
class Control:
    """A ping, pong or close frame and its payload."""

    opcode: int
    payload: bytes


def frame(opcode: int, payload: bytes | bytearray | memoryview, *, fin: bool = True) -> bytes:
    """Return an unmasked (server) frame."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        header = bytes((first, length))
    elif length < 65_536:
        header = struct.pack("!BBH", first, 126, length)
    else:
        header = struct.pack("!BBQ", first, 127, length)
    return header + bytes(payload)


def text_frame(text: str) -> bytes:
    """Return the frame of one text message."""
    return frame(OP_TEXT, text.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    """Return a close frame; the reason is cut to fit a control frame."""
    encoded = reason.encode()[:_MAX_REASON_BYTES].decode(errors="ignore").encode()
    return frame(OP_CLOSE, struct.pack("!H", code) + encoded)


def parse_close(payload: bytes) -> tuple[int, str]:
    """Return the code and reason of a close frame's payload.

    Raises:
        FrameError: a one-byte payload, a code no endpoint may send, or a reason that
            is not UTF-8.
    """
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "a close payload has a 2-byte code")
    (code,) = struct.unpack("!H", payload[:2])
    if not (1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999):
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_DATA, "the close reason is not UTF-8") from None
    return code, reason


def unmask(payload: bytes | bytearray | memoryview, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask``, repeated (RFC 6455 §5.3)."""
    length = len(payload)
    if not length:
        return b""
    # One big-integer XOR instead of a loop per byte.
    key = (mask * (length // 4 + 1))[:length]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(length, "little")


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """Mask ``payload`` as a client does (the same XOR as ``unmask``)."""
    return unmask(payload, mask)


class FrameParser:
    """Reads a client's frames; see the module docstring."""

    __slots__ = ("_buffer", "_events", "_fragments", "_fragments_size", "_max_size", "_opcode")

    def __init__(self, max_message_bytes: int) -> None:
        self._max_size = max_message_bytes
        self._buffer = bytearray()
        self._events: list[Message | Control] = []
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._opcode: int | None = None  # of the fragmented message in progress

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Parse ``data``; then take ``events()``.

        Raises:
            FrameError: the client broke a rule; nothing after it is parsed.
        """
        buffer = self._buffer
        buffer += data
        position = 0
        while True:
            consumed = self._parse_frame(buffer, position)
            if consumed == 0:
                break
            position += consumed
        if position:
            del buffer[:position]
        if len(buffer) > self._max_size + 14 and self._opcode is None:
            # A header that claims an oversized frame is refused as soon as it is read;
            # this only guards a buffer that grows without a header ever completing.
            raise FrameError(CLOSE_TOO_BIG, f"frame over {self._max_size:,} bytes")

    def events(self) -> list[Message | Control]:
        """Return and forget the messages and control frames parsed so far, in order."""
        events, self._events = self._events, []
        return events

    def _parse_frame(self, buffer: bytearray, start: int) -> int:
        """Parse one frame at ``start``; return the bytes it took, 0 if incomplete."""
        available = len(buffer) - start
        if available < 2:
            return 0
        first, second = buffer[start], buffer[start + 1]
        fin = bool(first & 0x80)
        opcode = first & 0x0F
        if first & 0x70:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set; no extension is in use")
        if not second & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        length = second & 0x7F
        header = 2
        if length == 126:
            if available < 4:
                return 0
            (length,) = struct.unpack_from("!H", buffer, start + 2)
            header = 4
        elif length == 127:
            if available < 10:
                return 0
            (length,) = struct.unpack_from("!Q", buffer, start + 2)
            header = 10
        self._check_frame(opcode, fin, length)
        total = header + 4 + length
        if available < total:
            return 0
        mask = bytes(buffer[start + header : start + header + 4])
        payload = unmask(memoryview(buffer)[start + header + 4 : start + total], mask)
        self._receive_frame(opcode, fin, payload)
        return total

    def _check_frame(self, opcode: int, fin: bool, length: int) -> None:
        if opcode in _CONTROL_OPCODES:
            if not fin or length > MAX_CONTROL_PAYLOAD:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames are short and whole")
            return
        if opcode not in _DATA_OPCODES:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode == OP_CONTINUATION and self._opcode is None:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a continuation frame with no message")
        if opcode != OP_CONTINUATION and self._opcode is not None:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a new message inside a fragmented one")
        if self._fragments_size + length > self._max_size:
            raise FrameError(CLOSE_TOO_BIG, f"message over {self._max_size:,} bytes")

    def _receive_frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in _CONTROL_OPCODES:
            self._events.append(Control(opcode, payload))
            return
        if not fin:
            if opcode != OP_CONTINUATION:
                self._opcode = opcode
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            return
        if opcode == OP_CONTINUATION:
            self._fragments.append(payload)
            payload = b"".join(self._fragments)
            opcode = self._opcode or OP_TEXT
            self._fragments = []
            self._fragments_size = 0
            self._opcode = None
        if opcode == OP_TEXT:
            try:
                text = payload.decode()
            except UnicodeDecodeError:
                raise FrameError(CLOSE_INVALID_DATA, "a text message is not UTF-8") from None
            self._events.append(Message(text, None))
        else:
            self._events.append(Message(None, payload))
