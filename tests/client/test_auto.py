"""``transport="auto"`` (client/subscription.py): WebSocket, else SSE, else long polling,
behind a proxy that refuses some paths; and back to WebSocket after an outage."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import pytest
import uvicorn
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.client.conftest import API_KEY, Node, fast_backoff, numbers, take_publications
from tidings.client import ApiClient, Backoff, Subscription, TransportChoice, TransportRefused
from tidings.core.publication import Position, Publication
from tidings.errors import ConnectionClosed
from tidings.server.app import TidingsApp
from tidings.server.config import Settings

pytestmark = pytest.mark.e2e


class RefusingProxy:
    """An ASGI proxy in front of a tidings app that refuses some paths, as networks do:
    a WebSocket upgrade is answered 403, an HTTP request gets a 403 page (not a tidings
    error)."""

    def __init__(self, app: ASGIApp, refused: Iterable[str]) -> None:
        self.app = app
        self.refused = frozenset(refused)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and "/ws:mute" in self.refused:
            # Some proxies accept the upgrade, then pass nothing and hang up.
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
            return
        if scope["type"] != "lifespan" and scope["path"] in self.refused:
            if scope["type"] == "websocket":
                await receive()  # websocket.connect
                # Closing before accepting: uvicorn answers the upgrade with 403.
                await send({"type": "websocket.close", "code": 1008})
            else:
                page = PlainTextResponse("<h1>Blocked by the proxy</h1>", status_code=403)
                await page(scope, receive, send)
            return
        await self.app(scope, receive, send)


@asynccontextmanager
async def proxied_server(
    refused: Iterable[str], settings: Settings | None = None
) -> AsyncIterator[str]:
    """Serve a tidings app behind ``RefusingProxy`` with uvicorn on a real socket; yield
    its address. The socket listens before uvicorn starts, so nothing waits for it."""
    app = TidingsApp(settings or Settings(api_key=API_KEY))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(
        RefusingProxy(app, refused), lifespan="on", log_level="warning", ws="websockets-sansio"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving
        listener.close()


def subscription(
    url: str, channel: str, since: Position, transport: TransportChoice = "auto"
) -> Subscription:
    return Subscription(
        url, [channel], transport=transport, since={channel: since}, backoff=fast_backoff()
    )


async def receive_three(url: str, transport: TransportChoice = "auto") -> Subscription:
    channel = "room:through-the-proxy"
    async with ApiClient(url, API_KEY) as api:
        head = (await api.history(channel)).position
        async with subscription(url, channel, head, transport) as sub:
            for n in range(1, 4):
                await api.publish(channel, {"n": n})
            received = await take_publications(sub, 3)
    assert numbers(received) == [1, 2, 3]
    return sub


@pytest.mark.parametrize(
    ("refused", "expected"),
    [
        ((), "ws"),
        (("/ws",), "sse"),
        (("/ws:mute",), "sse"),
        (("/ws", "/sse"), "longpoll"),
    ],
    ids=["nothing-refused", "ws-refused", "ws-muted", "ws-and-sse-refused"],
)
async def test_auto_uses_the_first_transport_the_network_lets_through(
    refused: tuple[str, ...], expected: str
) -> None:
    async with proxied_server(refused) as url:
        sub = await receive_three(url)
    assert sub.transport == expected


async def test_a_fixed_transport_that_is_refused_stops_with_transport_refused() -> None:
    async with proxied_server(["/ws"]) as url:
        with pytest.raises(TransportRefused) as refused:
            await receive_three(url, transport="ws")
    assert refused.value.status == 403
    assert refused.value.transport == "ws"


async def test_auto_stays_on_websocket_when_tidings_refuses_the_token() -> None:
    # 4001 is tidings' own refusal, not the network's: another transport would be
    # refused the same, so the subscription stops instead of moving on.
    settings = Settings(api_key=API_KEY, jwt_secret="the-node-secret-long-enough-for-hs256")
    async with proxied_server((), settings) as url:
        sub = Subscription(url, ["room:x"], token="not-a-jwt", backoff=fast_backoff())
        with pytest.raises(ConnectionClosed) as closed:
            async with sub:
                await anext(sub)
    assert closed.value.code == 4001
    assert sub.transport == "ws"


class CountingDelays:
    """Backoff randomness that counts the waits (failed connections) and keeps them short."""

    def __init__(self, enough: int) -> None:
        self.waits = 0
        self.enough = asyncio.Event()
        self._enough_count = enough

    def __call__(self, low: float, high: float) -> float:
        self.waits += 1
        if self.waits >= self._enough_count:
            self.enough.set()
        return min(high, 0.05)


async def test_auto_ends_on_websocket_when_the_server_was_down_at_first(data_node: Node) -> None:
    channel = "room:late-server"
    async with data_node.api() as api:
        head = (await api.history(channel)).position
    await data_node.stop()
    delays = CountingDelays(enough=4)
    sub = Subscription(
        data_node.http_url,
        [channel],
        since={channel: head},
        backoff=Backoff(base_s=0.05, cap_s=0.05, uniform=delays),
    )
    async with sub:
        started = asyncio.ensure_future(anext(sub))  # connecting, refused for now
        async with asyncio.timeout(15):
            await delays.enough.wait()  # it failed repeatedly, on every transport it tried
        await data_node.start()
        async with data_node.api() as api:
            await api.publish(channel, {"n": 1})
        async with asyncio.timeout(15):
            first = await started
        assert isinstance(first, Publication)
        assert numbers([first]) == [1]
        assert sub.transport == "ws"
