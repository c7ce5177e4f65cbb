"""A WebSocket client that stops reading when told to: the slow consumer of docs/protocol.md §7,
made on purpose.

Socket I/O over asyncio streams; frames are parsed by the sans-I/O ``ClientProtocol`` of
``websockets``, so nothing reads the socket behind the test's back. A small kernel
receive buffer (``SO_RCVBUF``) and a small stream limit keep what the client side can
absorb low, so the server's own buffers fill after a few hundred kilobytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from websockets.client import ClientProtocol
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

Frame = dict[str, Any]

RECEIVE_BUFFER_BYTES: Final = 4096
READ_CHUNK_BYTES: Final = 65_536
DEFAULT_TIMEOUT_S: Final = 10.0


@dataclass
class StalledClient:
    """One connection whose reading the test controls."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: ClientProtocol
    frames: list[Frame] = field(default_factory=list)

    async def send(self, command: Frame) -> None:
        """Send one command frame."""
        self.protocol.send_text(json.dumps(command).encode())
        await self._flush()

    async def request(self, command: Frame, wait_s: float = DEFAULT_TIMEOUT_S) -> Frame:
        """Send a command and read until its reply (frames before it are kept in ``frames``)."""
        await self.send(command)
        async with asyncio.timeout(wait_s):
            while True:
                for frame in await self._read_frames():
                    if frame.get("id") == command["id"]:
                        return frame
                    self.frames.append(frame)

    async def read_until_closed(self, wait_s: float = DEFAULT_TIMEOUT_S) -> int | None:
        """Read everything the server sends until its close frame; return the close code.

        The text frames read are appended to ``frames``.
        """
        async with asyncio.timeout(wait_s):
            while self.protocol.close_rcvd is None and self.protocol.state is not State.CLOSED:
                self.frames.extend(await self._read_frames())
        return None if self.protocol.close_rcvd is None else self.protocol.close_rcvd.code

    async def _read_frames(self) -> list[Frame]:
        data = await self.reader.read(READ_CHUNK_BYTES)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        await self._flush()  # pongs and the answer to a close
        return [
            json.loads(bytes(event.data))
            for event in self.protocol.events_received()
            if isinstance(event, WireFrame) and event.opcode is Opcode.TEXT
        ]

    async def _flush(self) -> None:
        pending = self.protocol.data_to_send()
        if pending and not self.writer.is_closing():
            self.writer.write(b"".join(pending))
            await self.writer.drain()


@asynccontextmanager
async def stalled_client(url: str) -> AsyncIterator[StalledClient]:
    """Connect to ``url`` (``ws://host:port/path``) with small buffers; close on exit."""
    uri = parse_uri(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting: the window the client advertises is fixed at the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (uri.host, uri.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=RECEIVE_BUFFER_BYTES)
    protocol = ClientProtocol(uri, max_size=None)
    client = StalledClient(reader, writer, protocol)
    try:
        protocol.send_request(protocol.connect())
        await client._flush()
        async with asyncio.timeout(DEFAULT_TIMEOUT_S):
            while protocol.state is State.CONNECTING:
                client.frames.extend(await client._read_frames())
        if protocol.handshake_exc is not None:
            raise protocol.handshake_exc
        yield client
    finally:
        writer.close()
        with contextlib.suppress(OSError):  # the server may have reset the connection
            await writer.wait_closed()
