"""Three tidings nodes sharing channels through NATS JetStream: real ``tidings serve``
processes, a ``nats-server`` of the test's own (on a free port, restarted mid-stream),
and subscribers over every transport (WebSocket, SSE, long polling).

A disconnect sent to one node closes the user's connections on every node.

Publishers behave as applications should: an answer other than 200 is retried with
the same idempotency key, so every publication is acknowledged exactly once. The
subscribers must receive offsets 1..N, each once, in order, whatever NATS went through.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CONFIG
from tests.support.nats_server import NatsServer
from tests.support.server import ServerProcess, nodes_sharing
from tests.support.sse import sse_stream
from tests.support.ws import ws_client

pytestmark = pytest.mark.e2e

PUBLISHERS: Final = 3
PER_PUBLISHER: Final = 20
TOTAL: Final = PUBLISHERS * PER_PUBLISHER
RESTART_AFTER: Final = 20  # acknowledged publications before NATS restarts
LIMIT_S: Final = 45.0
HTTP_TIMEOUT: Final = httpx.Timeout(15.0)
API_ENV: Final = {"TIDINGS_API_KEY": API_KEY}


async def publish_until_acknowledged(
    http: httpx.AsyncClient, node: ServerProcess, channel: str, n: int
) -> dict[str, Any]:
    """POST /api/publish, again with the same key while the answer is not 200."""
    body = {"channel": channel, "data": {"n": n}, "key": f"pub-{n}"}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    while True:
        try:
            response = await http.post(f"{node.http_url}/api/publish", json=body, headers=headers)
        except httpx.TransportError:
            response = None
        if response is not None and response.status_code == 200:
            answer: dict[str, Any] = response.json()
            return answer
        await asyncio.sleep(0.05)  # NATS is restarting: 503 unavailable, try again


async def wait_for_ready(http: httpx.AsyncClient, nodes: list[ServerProcess], status: int) -> None:
    """Poll ``/ready`` of every node (an observable condition) until it answers ``status``."""
    for node in nodes:
        while (await http.get(f"{node.http_url}/ready")).status_code != status:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def read_over_websocket(
    node: ServerProcess, channel: str, subscribed: asyncio.Event
) -> list[dict[str, Any]]:
    async with ws_client(node.ws_url) as ws:
        await ws.result("subscribe", channel=channel)
        subscribed.set()
        return await ws.publications(TOTAL, wait_s=LIMIT_S)


async def read_over_sse(
    http: httpx.AsyncClient, channel: str, subscribed: asyncio.Event
) -> list[dict[str, Any]]:
    async with sse_stream(http, {"channel": channel}) as stream:
        assert (await stream.next_event()).type == "subscribed"
        subscribed.set()
        return await stream.publications(TOTAL, wait_s=LIMIT_S)


async def read_over_long_polls(
    http: httpx.AsyncClient, node: ServerProcess, channel: str, subscribed: asyncio.Event
) -> list[dict[str, Any]]:
    response = await http.get(f"{node.http_url}/poll", params={"channel": channel})
    assert response.status_code == 200, response.text
    cursor = response.json()["cursor"]
    subscribed.set()
    got: list[dict[str, Any]] = []
    while len(got) < TOTAL:
        params = {"channel": channel, "cursor": cursor, "wait": "5"}
        response = await http.get(f"{node.http_url}/poll", params=params)
        if response.status_code != 200:  # NATS restarting: ask again from the same cursor
            await asyncio.sleep(0.05)
            continue
        answer = response.json()
        assert answer["recovered"] is not False, answer
        got += answer["publications"]
        cursor = answer["cursor"]
    return got


async def test_three_nodes_publishing_through_a_nats_restart_lose_nothing_on_any_transport(
    tmp_path: Path,
) -> None:
    channel = f"room:{secrets.token_hex(6)}"
    nats_server = NatsServer(tmp_path / "nats").start()
    try:
        with nodes_sharing(nats_server.url, 3, tmp_path, config=CONFIG, env=API_ENV) as nodes:
            async with (
                httpx.AsyncClient(timeout=HTTP_TIMEOUT) as http,
                httpx.AsyncClient(base_url=nodes[1].http_url, timeout=HTTP_TIMEOUT) as sse_http,
                asyncio.timeout(LIMIT_S),
            ):
                await wait_for_ready(http, nodes, 200)
                ready = [asyncio.Event() for _ in range(3)]
                readers = [
                    asyncio.create_task(read_over_websocket(nodes[0], channel, ready[0])),
                    asyncio.create_task(read_over_sse(sse_http, channel, ready[1])),
                    asyncio.create_task(read_over_long_polls(http, nodes[2], channel, ready[2])),
                ]
                for event in ready:
                    await event.wait()
                acknowledged: list[dict[str, Any]] = []
                enough = asyncio.Event()

                async def publisher(index: int) -> None:
                    for k in range(PER_PUBLISHER):
                        n = index * PER_PUBLISHER + k
                        node = nodes[(index + k) % len(nodes)]
                        acknowledged.append(
                            await publish_until_acknowledged(http, node, channel, n)
                        )
                        if len(acknowledged) >= RESTART_AFTER:
                            enough.set()

                publishers = [asyncio.create_task(publisher(i)) for i in range(PUBLISHERS)]
                await enough.wait()
                await asyncio.to_thread(nats_server.stop)
                await wait_for_ready(http, nodes, 503)
                await asyncio.to_thread(nats_server.start)
                await wait_for_ready(http, nodes, 200)
                await asyncio.gather(*publishers)
                received = await asyncio.gather(*readers)
    finally:
        nats_server.stop()

    assert sorted(a["offset"] for a in acknowledged) == list(range(1, TOTAL + 1))
    assert len({a["epoch"] for a in acknowledged}) == 1
    for frames in received:  # WebSocket, SSE, long polling
        assert [f["offset"] for f in frames] == list(range(1, TOTAL + 1))
        assert sorted(f["data"]["n"] for f in frames) == list(range(TOTAL))
