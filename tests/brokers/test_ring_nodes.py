"""Nodes of a ring kept in etcd (``ring_etcd``): real ``tidings serve`` processes and a real
etcd of the test's own. Nodes that start join the ring and route by it (``/route``
agrees on every node, and a client is sent to the owner); a node that stops leaves at
once; a node killed is taken out once its lease expires. One test, three nodes: each
start costs a process."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from typing import Final

import httpx
import pytest

from tests.support.etcd import etcd_server
from tests.support.server import ServerProcess, free_port, start_server
from tidings.client import Subscription
from tidings.core.publication import Publication
from tidings.core.ring import HashRing

API_KEY: Final = "ring-nodes-api-key"
KEYS: Final = [f"doc:{n}" for n in range(40)]
# Nodes leave at once on SIGTERM; a killed one after its lease (2 s) and the watch.
CONDITION_TIMEOUT_S: Final = 15.0
POLL_S: Final = 0.05


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


def start_node(etcd_url: str, node: str, prefix: str) -> ServerProcess:
    env = {
        "TIDINGS_API_KEY": API_KEY,
        "TIDINGS_NODE_ID": node,
        "TIDINGS_RING_ETCD": etcd_url,
        "TIDINGS_RING_PREFIX": prefix,
        "TIDINGS_RING_TTL": "2s",
        "TIDINGS_SHUTDOWN_TIMEOUT": "1s",
    }
    return start_server(port=free_port(), env=env)


async def routes(client: httpx.AsyncClient, server: ServerProcess) -> dict[str, str]:
    """Where ``server`` says each of KEYS is served."""
    answers = {}
    for key in KEYS:
        response = await client.get(f"{server.http_url}/route", params={"key": key})
        answers[key] = response.json()["url"]
    return answers


async def until_routes(
    client: httpx.AsyncClient, server: ServerProcess, expected: dict[str, str]
) -> None:
    """Poll ``server``'s ``/route`` until it answers ``expected`` (a ring version to come)."""
    async with asyncio.timeout(CONDITION_TIMEOUT_S):
        while await routes(client, server) != expected:  # noqa: ASYNC110  (a poll of /route)
            await asyncio.sleep(POLL_S)


def expected_routes(servers: dict[str, ServerProcess]) -> dict[str, str]:
    ring = HashRing(servers)
    return {key: servers[ring.owner(key)].http_url for key in KEYS}


async def start_nodes(etcd_url: str, prefix: str, *nodes: str) -> dict[str, ServerProcess]:
    """Start ``nodes`` side by side (each start waits for its process to listen)."""
    started = await asyncio.gather(
        *(asyncio.to_thread(start_node, etcd_url, node, prefix) for node in nodes),
        return_exceptions=True,
    )
    servers = [server for server in started if isinstance(server, ServerProcess)]
    if len(servers) != len(nodes):
        for server in servers:
            server.kill()
        raise next(error for error in started if isinstance(error, BaseException))
    return dict(zip(nodes, servers, strict=True))


async def first_publication(client: httpx.AsyncClient, owner: str, sub: Subscription) -> int:
    """Publish ``{"n": 0}``, ``{"n": 1}``... in the subscription's channel on ``owner``
    until the subscription receives one (it starts from now, so it may miss the first
    ones); return the ``n`` it received."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    receiving = asyncio.create_task(anext(sub))
    n = 0
    async with asyncio.timeout(CONDITION_TIMEOUT_S):
        while not receiving.done():
            body = {"channel": sub.channels[0], "data": {"n": n}}
            await client.post(f"{owner}/api/publish", json=body, headers=headers)
            n += 1
            await asyncio.wait({receiving}, timeout=0.1)
    publication = receiving.result()
    assert isinstance(publication, Publication), publication
    value: int = json.loads(publication.data)["n"]
    return value


async def test_nodes_route_by_the_ring_in_etcd_and_nodes_that_go_are_left_out(
    etcd_url: str, request: pytest.FixtureRequest
) -> None:
    servers = await start_nodes(etcd_url, f"/test/{request.node.name}", "a", "b", "c")
    a, b, c = servers["a"], servers["b"], servers["c"]
    try:
        async with httpx.AsyncClient() as client:
            every = expected_routes(servers)
            assert set(every.values()) == {a.http_url, b.http_url, c.http_url}
            for server in servers.values():
                await until_routes(client, server, every)
            # A client of a for a channel of b's is served by b.
            ring = HashRing(servers)
            channel = next(key for key in KEYS if ring.owner(key) == "b")
            async with Subscription(a.http_url, [channel], transport="sse") as sub:
                assert await first_publication(client, b.http_url, sub) >= 0
            # A node that stops leaves the ring at once (it drains after leaving).
            await asyncio.to_thread(b.stop, signal.SIGTERM)
            without_b = expected_routes({"a": a, "c": c})
            await until_routes(client, a, without_b)
            await until_routes(client, c, without_b)
            # A node killed is taken out once its lease expires.
            c.kill()
            await until_routes(client, a, dict.fromkeys(KEYS, a.http_url))
    finally:
        for server in servers.values():
            server.kill()
