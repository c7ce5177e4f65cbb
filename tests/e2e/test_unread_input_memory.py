"""A client that sends and never reads does not grow a node's memory (docs/protocol.md §2.5,
issue #11 items 2 and 3): WebSocket pings whose pongs it never reads, pipelined polls
whose answers it never reads, and megabytes of pipelined bodies behind an SSE stream.
The node stops reading such a client, so TCP holds it back; what the node holds is
measured from its resident memory (``/proc``) before and after the abuse."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CONFIG, api_client, unique
from tests.support.rss import MIB, rss_bytes
from tests.support.server import ServerProcess, start_server
from tests.support.wsframes import client_frame
from tidings.server.native.frames import OP_PING

# What may be sent in all; the node must stop reading long before.
ABUSE_BYTES: Final = 128 * MIB
GROWTH_BOUND_BYTES: Final = 32 * MIB
# A send that makes no progress for this long: the node has stopped reading.
STALL_S: Final = 3.0
CHUNK_BYTES: Final = 256 * 1024
# Tiny client buffers: the node's own buffers fill after a few kilobytes.
RECEIVE_BUFFER_BYTES: Final = 4096
TIMEOUT_S: Final = 10.0


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    process = start_server(config=config, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


@asynccontextmanager
async def unread_connection(
    port: int,
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection whose client reads nothing unless told to."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before connecting: the window the client advertises is fixed at the handshake.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        yield reader, writer
    finally:
        writer.transport.abort()  # what is still unsent is dropped at once
        await asyncio.sleep(0)  # the transport closes its socket on the next loop pass


async def send_until_stalled(writer: asyncio.StreamWriter, unit: bytes) -> int:
    """Send ``unit`` over and over until the node stops reading (or ``ABUSE_BYTES``);
    return how many bytes were handed to the kernel."""
    chunk = unit * max(1, CHUNK_BYTES // len(unit))
    sent = 0
    while sent < ABUSE_BYTES:
        writer.write(chunk)
        try:
            await asyncio.wait_for(writer.drain(), STALL_S)
        except TimeoutError:
            return sent
        sent += len(chunk)
    return sent


async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %b\r\nSec-WebSocket-Version: 13\r\n\r\n" % key
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 101 "), head


def growth_past(process: ServerProcess, before: int) -> int:
    return rss_bytes(process.process.pid) - before


async def test_websocket_pings_never_read_back_do_not_grow_the_node(
    node: ServerProcess,
) -> None:
    before = rss_bytes(node.process.pid)
    async with unread_connection(node.port) as (reader, writer):
        await handshake(reader, writer)
        await send_until_stalled(writer, client_frame(OP_PING, b"p" * 125))
        assert growth_past(node, before) < GROWTH_BOUND_BYTES


async def polls_answered(http: httpx.AsyncClient) -> int:
    """How many polls the node has answered (its ``/metrics``)."""
    text = (await http.get("/metrics")).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("tidings_poll_requests_total")
    )


async def test_pipelined_polls_never_read_do_not_grow_the_node(node: ServerProcess) -> None:
    channel = unique()
    async with api_client(node) as api:
        position = await api.publish(channel, "x")
        since = f"{position['epoch']}:{position['offset']}"
        # Polled once: the channel is watched, and later polls are answered from memory.
        await api.http.get("/poll", params={"channel": channel, "since": since})
    before = rss_bytes(node.process.pid)
    polls = b"".join(
        b"GET /poll?channel=%b&since=%b&limit=%d HTTP/1.1\r\nHost: x\r\n\r\n"
        % (channel.encode(), since.encode(), limit)
        for limit in range(1, 1001)
    )
    async with unread_connection(node.port) as (_reader, writer):
        await send_until_stalled(writer, polls)
        assert growth_past(node, before) < GROWTH_BOUND_BYTES


@pytest.mark.parametrize("stream", ["sse", "long-poll"])
async def test_pipelined_bodies_behind_a_stream_are_not_read_ahead(
    node: ServerProcess, stream: str
) -> None:
    channel = unique()
    async with api_client(node) as api:
        position = await api.publish(channel, "before")
    if stream == "sse":
        first = f"GET /sse?channel={channel} HTTP/1.1\r\nHost: x\r\n\r\n"
    else:  # a long poll that waits for the next publication
        since = f"{position['epoch']}:{position['offset']}"
        first = f"GET /poll?channel={channel}&since={since}&wait=60 HTTP/1.1\r\nHost: x\r\n\r\n"
    before = rss_bytes(node.process.pid)
    body = b"x" * (8 * MIB)
    publish = (
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )
    async with unread_connection(node.port) as (_reader, writer):
        writer.write(first.encode())
        for _ in range(16):
            writer.write(publish)
            try:
                await asyncio.wait_for(writer.drain(), STALL_S)
            except TimeoutError:
                break
        assert growth_past(node, before) < GROWTH_BOUND_BYTES
