"""Several tidings nodes sharing channels through Redis: real ``tidings serve`` processes,
real WebSocket clients, a real Redis (the shared one on a database of each test's own,
flushed first; a dedicated ``redis-server`` when the test restarts it; the session's
local Redis Cluster for the cluster variant).
"""

from __future__ import annotations

import asyncio
import secrets
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
import redis

from tests.e2e.conftest import API_KEY
from tests.support.redis_cluster import (
    RedisServer,
    redis_cluster,  # noqa: F401  (a fixture used here)
)
from tests.support.server import ServerProcess, nodes_sharing
from tests.support.services import REDIS_HOST, REDIS_PORT, require_service
from tests.support.ws import Frame, WsClient, ws_client

pytestmark = pytest.mark.e2e

CONFIG: Final = """
[namespaces.room]
client_publish = true
history_size = 500
"""
POLL_LIMIT_S: Final = 20.0
API_ENV: Final = {"TIDINGS_API_KEY": API_KEY}


def fresh_database(db: int) -> str:
    """Flush database ``db`` of the shared Redis and return its URL."""
    require_service(REDIS_HOST, REDIS_PORT, "Redis")
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def unique_channel() -> str:
    return f"room:{secrets.token_hex(6)}"


async def publish(http: httpx.AsyncClient, node: ServerProcess, channel: str, n: int) -> Frame:
    response = await http.post(
        f"{node.http_url}/api/publish",
        json={"channel": channel, "data": {"n": n}},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert response.status_code == 200, response.text
    result: Frame = response.json()
    return result


async def ready_status(http: httpx.AsyncClient, node: ServerProcess) -> int:
    return (await http.get(f"{node.http_url}/ready")).status_code


async def wait_for_status(
    http: httpx.AsyncClient, servers: list[ServerProcess], status: int
) -> None:
    """Poll ``/ready`` of every node (an observable condition) until it answers ``status``."""
    try:
        async with asyncio.timeout(POLL_LIMIT_S):
            for node in servers:
                while await ready_status(http, node) != status:  # noqa: ASYNC110  (a poll)
                    await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"/ready did not answer {status} in time")


def positions(frames: list[Frame]) -> list[tuple[str, int]]:
    return [(frame["epoch"], frame["offset"]) for frame in frames]


async def connected_clients(
    stack: AsyncExitStack, servers: list[ServerProcess], channel: str
) -> list[WsClient]:
    clients = []
    for server in servers:
        client = await stack.enter_async_context(ws_client(server.ws_url))
        await client.result("subscribe", channel=channel)
        clients.append(client)
    return clients


async def check_every_node_delivers_one_order(broker: str, directory: Path) -> None:
    channel, count = unique_channel(), 30
    with nodes_sharing(broker, 3, directory, config=CONFIG, env=API_ENV) as servers:
        async with AsyncExitStack() as stack, httpx.AsyncClient() as http:
            clients = await connected_clients(stack, servers, channel)

            results = await asyncio.gather(
                *(publish(http, servers[n % 3], channel, n) for n in range(count))
            )

            received = [await client.publications(count) for client in clients]
    assert sorted(result["offset"] for result in results) == list(range(1, count + 1))
    assert [[frame["offset"] for frame in frames] for frames in received] == [
        list(range(1, count + 1))
    ] * 3
    assert received[0] == received[1] == received[2]


async def test_clients_on_every_node_receive_every_publication_in_one_order(
    tmp_path: Path,
) -> None:
    await check_every_node_delivers_one_order(fresh_database(11), tmp_path)


async def test_clients_on_every_cluster_node_receive_every_publication_in_one_order(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    cluster: Any = request.getfixturevalue("redis_cluster")
    await check_every_node_delivers_one_order(cluster.url, tmp_path)


async def test_clients_of_a_killed_node_resume_on_another_without_loss(tmp_path: Path) -> None:
    channel = unique_channel()
    with nodes_sharing(fresh_database(12), 2, tmp_path, config=CONFIG, env=API_ENV) as (
        doomed,
        survivor,
    ):
        async with httpx.AsyncClient() as http, ws_client(survivor.ws_url) as bystander:
            await bystander.result("subscribe", channel=channel)
            async with ws_client(doomed.ws_url) as client:
                await client.result("subscribe", channel=channel)
                for n in range(5):
                    await publish(http, survivor, channel, n)
                last = (await client.publications(5))[-1]
                doomed.kill()
                await client.wait_closed()
            for n in range(5, 10):
                await publish(http, survivor, channel, n)

            async with ws_client(survivor.ws_url) as resumed:
                since = {"epoch": last["epoch"], "offset": last["offset"]}
                result = await resumed.result("subscribe", channel=channel, since=since)
                await publish(http, survivor, channel, 10)
                [live] = await resumed.publications(1)
            everything = await bystander.publications(11)
    assert result["recovered"] is True
    assert [p["offset"] for p in result["publications"]] == [6, 7, 8, 9, 10]
    assert [p["data"] for p in result["publications"]] == [{"n": n} for n in range(5, 10)]
    assert live["offset"] == 11
    assert [frame["offset"] for frame in everything] == list(range(1, 12))


async def next_non_ping(client: WsClient) -> Frame:
    """Return the client's next push that is not a heartbeat."""
    while (push := await client.next_push())["push"] == "ping":
        pass
    return push


@pytest.mark.parametrize("persistence", ["none", "aof"])
async def test_nodes_recover_from_a_redis_restart(tmp_path: Path, persistence: str) -> None:
    channel = unique_channel()
    extra = ["--appendonly", "yes", "--appendfsync", "always"] if persistence == "aof" else []
    server = RedisServer(tmp_path / "redis", extra=extra).start()
    # With appendfsync always Redis never comes back older: the operator may say so, and
    # the nodes keep the epochs across the restart (docs/brokers/redis.md).
    url = server.url + ("?trust_restarts=yes" if persistence == "aof" else "")
    try:
        with nodes_sharing(url, 2, tmp_path, config=CONFIG, env=API_ENV) as (node_a, node_b):
            async with httpx.AsyncClient() as http, ws_client(node_a.ws_url) as staying:
                await staying.result("subscribe", channel=channel)
                async with ws_client(node_b.ws_url) as leaving:
                    await leaving.result("subscribe", channel=channel)
                    for n in range(3):
                        await publish(http, node_a, channel, n)
                    await staying.publications(3)
                    held = (await leaving.publications(3))[-1]

                server.stop()
                await wait_for_status(http, [node_a, node_b], 503)
                server.start()
                await wait_for_status(http, [node_a, node_b], 200)
                after = [await publish(http, node_b, channel, n) for n in (3, 4)]
                if persistence == "aof":
                    live = await staying.publications(2)
                else:
                    # The new epoch does not follow what the client holds: rather than
                    # deliver past a hole, the node tells it to resume (4504).
                    goodbye = await next_non_ping(staying)
                    live = []

                async with ws_client(node_b.ws_url) as back:
                    since = {"epoch": held["epoch"], "offset": held["offset"]}
                    resumed = await back.result("subscribe", channel=channel, since=since)
    finally:
        server.stop()
    if persistence == "aof":  # Redis kept everything: nothing missed, nothing repeated
        assert positions(live) == [(r["epoch"], r["offset"]) for r in after]
        assert positions(live) == [(held["epoch"], 4), (held["epoch"], 5)]
        assert resumed["recovered"] is True
        assert positions(resumed["publications"]) == positions(live)
    else:  # Redis lost everything: a new epoch, and both clients are told
        assert (goodbye["push"], goodbye["code"], goodbye["reconnect"]) == (
            "disconnect",
            4504,
            True,
        )
        assert [r["offset"] for r in after] == [1, 2]
        assert after[0]["epoch"] != held["epoch"]
        assert resumed["recovered"] is False
        assert (resumed["epoch"], resumed["offset"]) == (after[-1]["epoch"], 2)
