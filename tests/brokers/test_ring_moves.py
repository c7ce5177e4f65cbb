"""Connections moved when the ring in etcd changes (server/ring_moves.py), with real
``tidings serve`` nodes and a real etcd of the test's own: node ``a`` serves alone;
node ``b`` joins; ``a`` tells each client holding a channel the new ring gives ``b``
``{"push": "disconnect", "code": 4503, "reconnect": true, "url": <b>}`` and closes it,
leaves the clients of its own channels alone, and the Python client (over WebSocket
and SSE) follows ``url`` to ``b`` and goes on there: ``a`` handed the channel's history
over to ``b`` before moving it (server/handover.py), so the client resumes with
nothing lost (no gap notice, the same epoch), then is given what is published, through
``a``'s server API, which forwards it to the channel's sequencer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest

from tests.client.conftest import fast_backoff, take
from tests.support.etcd import etcd_server
from tests.support.server import ServerProcess, free_port, start_server
from tests.support.ws import WsClient, ws_client
from tidings.client import Subscription
from tidings.core.publication import Publication
from tidings.core.ring import HashRing

API_KEY: Final = "ring-moves-api-key"
SECRET: Final = "a-cluster-secret-of-at-least-32-bytes"
AUTH: Final = {"authorization": f"Bearer {API_KEY}"}
TIMEOUT_S: Final = 15.0
RING: Final = HashRing(["a", "b"])


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


def start_node(etcd_url: str, node: str) -> ServerProcess:
    env = {
        "TIDINGS_API_KEY": API_KEY,
        "TIDINGS_CLUSTER_SECRET": SECRET,
        "TIDINGS_NODE_ID": node,
        "TIDINGS_RING_ETCD": etcd_url,
        "TIDINGS_RING_PREFIX": "/test/ring-moves",
        "TIDINGS_RING_TTL": "2s",
        "TIDINGS_RING_MOVE_RATE": "20",
        "TIDINGS_SHUTDOWN_TIMEOUT": "1s",
        "TIDINGS_NAMESPACES__ROOM__HISTORY_SIZE": "100",
    }
    return start_server(port=free_port(), env=env)


def owned_by(node: str, prefix: str) -> str:
    return next(c for c in (f"{prefix}{n}" for n in range(1000)) if RING.owner(c) == node)


async def publish(client: httpx.AsyncClient, url: str, channel: str, n: int) -> dict[str, Any]:
    body = {"channel": channel, "data": {"n": n}}
    response = await client.post(f"{url}/api/publish", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def next_push(ws: WsClient) -> dict[str, Any]:
    """The next push that is not a ping."""
    while True:
        push = await ws.next_push(TIMEOUT_S)
        if push.get("push") != "ping":
            return push


async def test_a_new_ring_moves_the_clients_of_channels_it_gives_to_another_node(
    etcd_url: str,
) -> None:
    moving, staying = owned_by("b", "room:ws-"), owned_by("a", "room:")
    followed, streamed = owned_by("b", "room:py-"), owned_by("b", "room:sse-")
    a = await asyncio.to_thread(start_node, etcd_url, "a")
    b: ServerProcess | None = None
    try:
        async with (
            httpx.AsyncClient() as client,
            ws_client(a.ws_url) as mover,
            ws_client(a.ws_url) as stayer,
            Subscription(a.http_url, [followed], transport="ws", backoff=fast_backoff()) as sub,
            Subscription(a.http_url, [streamed], transport="sse", backoff=fast_backoff()) as sse,
        ):
            for ws, channel in ((mover, moving), (stayer, staying)):
                await ws.result("connect")
                await ws.result("subscribe", channel=channel)
            first = await publish(client, a.http_url, followed, 1)
            [before] = await take(sub, 1)
            await publish(client, a.http_url, streamed, 1)
            await take(sse, 1)

            b = await asyncio.to_thread(start_node, etcd_url, "b")

            goodbye = await next_push(mover)
            assert await mover.wait_closed(TIMEOUT_S) == 4503
            after = await publish(client, a.http_url, followed, 2)  # forwarded if need be
            [moved] = await take(sub, 1)  # on b, resumed without a gap
            await publish(client, a.http_url, streamed, 2)
            [sse_moved] = await take(sse, 1)
            await publish(client, a.http_url, staying, 3)
            kept = await next_push(stayer)
    finally:
        for server in (a, b):
            if server is not None:
                server.kill()
    assert goodbye == {
        "push": "disconnect",
        "code": 4503,
        "reason": "the ring gave this connection's channels to another node",
        "reconnect": True,
        "url": b.ws_url,
    }
    assert isinstance(before, Publication)
    assert json.loads(before.data) == {"n": 1}
    # b was handed the channel: its epoch and offsets go on, and the client lost nothing.
    assert after["epoch"] == first["epoch"]
    assert after["offset"] == first["offset"] + 1
    assert isinstance(moved, Publication)
    assert (json.loads(moved.data), moved.offset) == ({"n": 2}, after["offset"])
    # An SSE stream is moved the same way.
    assert isinstance(sse_moved, Publication)
    assert json.loads(sse_moved.data) == {"n": 2}
    # The client of a channel a still owns was left alone.
    assert kept["push"] == "pub"
    assert kept["data"] == {"n": 3}
