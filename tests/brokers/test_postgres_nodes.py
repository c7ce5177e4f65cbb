"""Several ``tidings serve`` nodes sharing channels through PostgreSQL: real processes,
real clients on each transport (WebSocket, SSE, polling), a real PostgreSQL (the
machine's, on a schema of each test's own; a cluster of the test's own for the
restart, which must never touch the machine's server).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.support.postgres import POSTGRES_URL, LocalPostgres, require_postgres, unique_schema
from tests.support.server import ServerProcess, nodes_sharing
from tests.support.sse import SseStream, sse_stream
from tests.support.ws import WsClient, ws_client

API_KEY: Final = "test-api-key-for-postgres-nodes"
CONFIG: Final = """
[namespaces.room]
history_size = 2000
"""
DEADLINE_S: Final = 30.0
API_ENV: Final = {"TIDINGS_API_KEY": API_KEY}
RETRY_INTERVAL_S: Final = 0.05  # between two tries of a refused publish (a bounded retry)

Frame = dict[str, Any]


def schema_url() -> str:
    require_postgres()
    return f"{POSTGRES_URL}?schema={unique_schema()}"


def unique_channel() -> str:
    return f"room:{secrets.token_hex(6)}"


async def publish(
    http: httpx.AsyncClient, node: ServerProcess, channel: str, n: int, key: str | None = None
) -> httpx.Response:
    body: Frame = {"channel": channel, "data": {"n": n}}
    if key is not None:
        body["key"] = key
    return await http.post(
        f"{node.http_url}/api/publish", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )


async def publish_until_done(
    http: httpx.AsyncClient, servers: list[ServerProcess], channel: str, n: int
) -> Frame:
    """Publish ``{"n": n}`` with key ``n``, on one node after another, until one answers
    200: a refusal (``unavailable``) or a dead node is retried with the same key."""
    async with asyncio.timeout(DEADLINE_S):
        for attempt in range(10**6):
            node = servers[(n + attempt) % len(servers)]
            try:
                response = await publish(http, node, channel, n, key=f"k{n}")
            except httpx.TransportError:  # that node is dead
                continue
            if response.status_code == 200:
                result: Frame = response.json()
                return result
            assert response.status_code == 503, response.text
            await asyncio.sleep(RETRY_INTERVAL_S)
    raise AssertionError("unreachable")


async def wait_for_ready(
    http: httpx.AsyncClient, servers: list[ServerProcess], status: int
) -> None:
    """Poll ``/ready`` of every node (an observable condition) until it answers ``status``."""
    async with asyncio.timeout(DEADLINE_S):
        for node in servers:
            while (await http.get(f"{node.http_url}/ready")).status_code != status:  # noqa: ASYNC110
                await asyncio.sleep(RETRY_INTERVAL_S)


async def subscribed_ws(stack: AsyncExitStack, node: ServerProcess, channel: str) -> WsClient:
    client = await stack.enter_async_context(ws_client(node.ws_url))
    await client.result("subscribe", channel=channel)
    return client


async def subscribed_sse(stack: AsyncExitStack, node: ServerProcess, channel: str) -> SseStream:
    http = await stack.enter_async_context(httpx.AsyncClient(base_url=node.http_url))
    stream = await stack.enter_async_context(sse_stream(http, {"channel": channel}))
    assert (await stream.next_event()).type == "subscribed"
    return stream


async def poll_through(node: ServerProcess, channel: str, cursor: str, total: int) -> list[Frame]:
    """Long-poll ``channel`` from ``cursor`` until offset ``total``; a poll refused while
    the broker is down (503) is asked again with the same cursor."""
    got: list[Frame] = []
    async with httpx.AsyncClient(base_url=node.http_url, timeout=30) as http:
        async with asyncio.timeout(DEADLINE_S * 2):
            while not got or got[-1]["offset"] < total:
                params = {"channel": channel, "cursor": cursor, "wait": "5"}
                try:
                    response = await http.get("/poll", params=params)
                except httpx.TransportError:
                    await asyncio.sleep(RETRY_INTERVAL_S)
                    continue
                if response.status_code == 503:
                    await asyncio.sleep(RETRY_INTERVAL_S)
                    continue
                assert response.status_code == 200, response.text
                answer = response.json()
                got += answer["publications"]
                cursor = answer["cursor"]
    return got


async def poll_cursor(node: ServerProcess, channel: str) -> str:
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        response = await http.get("/poll", params={"channel": channel})
        assert response.status_code == 200, response.text
        cursor: str = response.json()["cursor"]
        return cursor


def offsets(frames: list[Frame]) -> list[int]:
    return [frame["offset"] for frame in frames]


async def test_a_thousand_publications_through_three_nodes_at_once_get_each_offset_once(
    tmp_path: Path,
) -> None:
    channel, count = unique_channel(), 1000
    with nodes_sharing(schema_url(), 3, tmp_path, config=CONFIG, env=API_ENV) as servers:
        async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
            watchers = [await subscribed_ws(stack, node, channel) for node in servers]
            gate = asyncio.Semaphore(48)

            async def one(n: int) -> httpx.Response:
                async with gate:
                    return await publish(http, servers[n % 3], channel, n)

            responses = await asyncio.gather(*(one(n) for n in range(count)))
            received = [await watcher.publications(count) for watcher in watchers]

    assert [r.status_code for r in responses] == [200] * count
    results = [r.json() for r in responses]
    assert sorted(r["offset"] for r in results) == list(range(1, count + 1))
    by_offset = {r["offset"]: {"n": n} for n, r in enumerate(results)}
    for frames in received:  # every node delivered them all, once, in offset order
        assert offsets(frames) == list(range(1, count + 1))
        assert {f["offset"]: f["data"] for f in frames} == by_offset


async def test_a_node_killed_mid_stream_loses_and_repeats_nothing(tmp_path: Path) -> None:
    channel, count = unique_channel(), 200
    with nodes_sharing(schema_url(), 3, tmp_path, config=CONFIG, env=API_ENV) as servers:
        async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
            watcher = await subscribed_ws(stack, servers[0], channel)
            first = await asyncio.gather(
                *(publish_until_done(http, servers, channel, n) for n in range(count // 2))
            )
            rest = asyncio.gather(
                *(publish_until_done(http, servers, channel, n) for n in range(count // 2, count))
            )
            await asyncio.to_thread(servers[2].kill)  # while the rest are under way
            results = [*first, *await rest]
            received = await watcher.publications(count)

    assert sorted(r["offset"] for r in results) == list(range(1, count + 1))
    assert offsets(received) == list(range(1, count + 1))
    # Each publication once: a publish retried after the kill kept its key.
    assert sorted(frame["data"]["n"] for frame in received) == list(range(count))


@pytest.fixture
def local_postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres().create()
    yield server
    server.destroy()


async def test_subscribers_on_every_transport_get_each_publication_once_across_a_postgres_restart(
    tmp_path: Path, local_postgres: LocalPostgres
) -> None:
    channel, before, total = unique_channel(), 20, 60
    with nodes_sharing(local_postgres.url, 2, tmp_path, config=CONFIG, env=API_ENV) as servers:
        node_a, node_b = servers
        async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
            websocket = await subscribed_ws(stack, node_a, channel)
            sse = await subscribed_sse(stack, node_b, channel)
            polled = asyncio.create_task(
                poll_through(node_b, channel, await poll_cursor(node_b, channel), total)
            )
            first = [await publish_until_done(http, servers, channel, n) for n in range(before)]

            await asyncio.to_thread(local_postgres.stop, "fast")
            await wait_for_ready(http, servers, 503)
            during = asyncio.gather(
                *(publish_until_done(http, servers, channel, n) for n in range(before, total))
            )
            await asyncio.to_thread(local_postgres.start)
            await wait_for_ready(http, servers, 200)
            results = [*first, *await during]
            over_ws = await websocket.publications(total)
            over_sse = await sse.publications(total)
            over_poll = await polled

    assert sorted(r["offset"] for r in results) == list(range(1, total + 1))
    assert len({r["epoch"] for r in results}) == 1  # PostgreSQL kept everything
    for frames in (over_ws, over_sse, over_poll):
        assert offsets(frames) == list(range(1, total + 1))
        assert sorted(frame["data"]["n"] for frame in frames) == list(range(total))
