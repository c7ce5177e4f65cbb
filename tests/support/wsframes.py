"""WebSocket frames as a test client writes and reads them (RFC 6455 §5), byte by byte."""

from __future__ import annotations

import struct

from tidings.server.native.frames import mask_payload


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04"
) -> bytes:
    """A masked frame, as a client sends it."""
    length = len(payload)
    first = (0x80 if fin else 0) | opcode
    if length < 126:
        header = bytes((first, 0x80 | length))
    elif length < 65_536:
        header = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, length)
    return header + mask + mask_payload(payload, mask)


def read_server_frame(data: bytes) -> tuple[int, bool, bytes]:
    """Decode one unmasked server frame: opcode, fin, payload."""
    first, second = data[0], data[1]
    assert not second & 0x80, "server frames are not masked"
    length, start = second & 0x7F, 2
    if length == 126:
        (length,) = struct.unpack_from("!H", data, 2)
        start = 4
    elif length == 127:
        (length,) = struct.unpack_from("!Q", data, 2)
        start = 10
    assert len(data) == start + length
    return first & 0x0F, bool(first & 0x80), data[start:]
