"""Raw HTTP/1.1 and WebSocket bytes over a TCP connection, for the native server's tests:
requests written exactly as given (malformed ones included), responses and frames read
back as they arrive. Socket I/O over asyncio streams."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Final

from tests.support.wsframes import read_server_frame
from tidings.server.native.frames import OP_TEXT
from tidings.server.native.websocket import accept_key

TIMEOUT_S: Final = 10.0
API_KEY: Final = "native-test-key"


def publish_request(channel: str, data: object, *, key: str = API_KEY) -> bytes:
    body = json.dumps({"channel": channel, "data": data}).encode()
    return (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
        % (key.encode(), len(body), body)
    )


class RawConnection:
    """A TCP connection that writes bytes as given and reads responses and frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """Read one response: status, headers (lower-case names), whole body."""
        async with asyncio.timeout(TIMEOUT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                body = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding") == "chunked":
                body = await self.chunk()
            else:
                body = b""
            return status, headers, body

    async def chunk(self) -> bytes:
        """Read one chunk of a chunked body."""
        size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
        data = await self.reader.readexactly(size + 2)
        return data[:-2]

    async def frame(self) -> tuple[int, bool, bytes]:
        """Read one server frame: opcode, fin, payload."""
        async with asyncio.timeout(TIMEOUT_S):
            head = await self.reader.readexactly(2)
            length = head[1] & 0x7F
            extra = b""
            if length == 126:
                extra = await self.reader.readexactly(2)
                length = struct.unpack("!H", extra)[0]
            elif length == 127:
                extra = await self.reader.readexactly(8)
                length = struct.unpack("!Q", extra)[0]
            payload = await self.reader.readexactly(length)
            return read_server_frame(head + extra + payload)

    async def text(self) -> dict[str, object]:
        """Read frames until a text frame; return its JSON."""
        while True:
            opcode, _fin, payload = await self.frame()
            if opcode == OP_TEXT:
                parsed: dict[str, object] = json.loads(payload)
                return parsed

    async def closed_by_server(self) -> bool:
        """Whether the server ends the connection (EOF) within the time-out."""
        async with asyncio.timeout(TIMEOUT_S):
            while await self.reader.read(65_536):
                pass
        self.writer.close()
        return True

    def close(self) -> None:
        self.writer.close()


async def connect(port: int, *, receive_buffer: int | None = None) -> RawConnection:
    """Connect to ``port`` on loopback; ``receive_buffer`` makes the client's kernel
    buffer that small, so that the server's buffers fill soon when it does not read."""
    if receive_buffer is None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return RawConnection(reader, writer)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting: the window the client advertises is fixed at the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    return RawConnection(reader, writer)


def upgrade(
    path: str = "/ws", *, version: bytes = b"13", extra: bytes = b""
) -> tuple[bytes, bytes]:
    """An opening handshake and its key."""
    key = base64.b64encode(os.urandom(16))
    request = (
        b"GET %b HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %b\r\nSec-WebSocket-Version: %b\r\n%b\r\n"
        % (path.encode(), key, version, extra)
    )
    return request, key


async def open_websocket(port: int, *, receive_buffer: int | None = None) -> RawConnection:
    conn = await connect(port, receive_buffer=receive_buffer)
    request, key = upgrade()
    await conn.send(request)
    status, headers, _ = await conn.response()
    assert status == 101
    assert headers["sec-websocket-accept"] == accept_key(key).decode()
    return conn


def command(op: str, command_id: int, **fields: object) -> bytes:
    return json.dumps({"op": op, "id": command_id, **fields}).encode()
