"""A relay says it is one on its upstream connection (docs/protocol.md §10): the
``Tidings-Relay: 1`` header on its WebSocket handshake and on its SSE requests, which
puts its link first in the upstream's fan-out (``hub.registry``). A loopback server of
the test's own records the request heads the links send."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tidings.brokers.relay_link import WebSocketLink
from tidings.brokers.relay_sse import SseLink
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.errors import RequestError

HEAD_TIMEOUT_S = 10.0


class Listener:
    """An upstream listener that wants nothing (the test looks at requests only)."""

    def position_of(self, channel: ChannelName) -> Position | None:
        return None

    def receive_subscribed(self, *_args: object, **_kwargs: object) -> None:
        pass

    def receive_publication(self, publication: Publication) -> None:
        pass

    def receive_refusal(self, channel: ChannelName, error: RequestError) -> None:
        pass


@pytest.fixture
async def heads() -> AsyncIterator[tuple[str, asyncio.Queue[bytes]]]:
    """A server that reads one request head per connection, keeps it, and hangs up."""
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            received.put_nowait(await reader.readuntil(b"\r\n\r\n"))
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}", received
    finally:
        server.close()
        await server.wait_closed()


async def test_the_websocket_link_says_it_is_a_relay(
    heads: tuple[str, asyncio.Queue[bytes]],
) -> None:
    address, received = heads
    link = WebSocketLink(f"ws://{address}/ws", lambda: "a-token")
    link.start(Listener())
    try:
        head = await asyncio.wait_for(received.get(), HEAD_TIMEOUT_S)
    finally:
        await link.close()
    lines = head.decode("latin-1").lower().split("\r\n")
    assert "tidings-relay: 1" in lines
    assert "authorization: bearer a-token" in lines


async def test_the_sse_link_says_it_is_a_relay(heads: tuple[str, asyncio.Queue[bytes]]) -> None:
    address, received = heads
    link = SseLink(f"http://{address}", lambda: None)
    link.start(Listener())
    try:
        follow = asyncio.create_task(link.follow(ChannelName("room:1")))
        head = await asyncio.wait_for(received.get(), HEAD_TIMEOUT_S)
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
    finally:
        await link.close()
    lines = head.decode("latin-1").lower().split("\r\n")
    assert lines[0].startswith("get /sse?")
    assert "tidings-relay: 1" in lines
