"""``tidings ring join|leave`` (cli/ring.py) against a real etcd of the test's own and real
``tidings serve`` nodes: a node started with ``ring_join = false`` is a member waiting
outside the ring until ``ring join`` brings it in; ``ring leave`` takes it out again while
it keeps running (its channels handed over: a client of one goes on without a gap), and
a mistake (a node that is not a member, or not in the ring) is one line."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Final

import httpx
import pytest
from click.testing import CliRunner, Result

from tests.client.conftest import fast_backoff
from tests.support.etcd import etcd_server
from tests.support.server import ServerProcess, free_port, start_server
from tidings.cli import main
from tidings.client import GapNotice, Subscription
from tidings.core.publication import Publication
from tidings.core.ring import HashRing
from tidings.server.runner import ExitStatus

API_KEY: Final = "ring-change-api-key"
SECRET: Final = "a-cluster-secret-of-at-least-32-bytes"
AUTH: Final = {"authorization": f"Bearer {API_KEY}"}
PREFIX: Final = "/test/ring-change"


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


def start_node(etcd_url: str, node: str, *, join: bool) -> ServerProcess:
    env = {
        "TIDINGS_API_KEY": API_KEY,
        "TIDINGS_CLUSTER_SECRET": SECRET,
        "TIDINGS_NODE_ID": node,
        "TIDINGS_RING_ETCD": etcd_url,
        "TIDINGS_RING_PREFIX": PREFIX,
        "TIDINGS_RING_TTL": "2s",
        "TIDINGS_RING_JOIN": "true" if join else "false",
        "TIDINGS_SHUTDOWN_TIMEOUT": "1s",
        "TIDINGS_NAMESPACES__ROOM__HISTORY_SIZE": "100",
    }
    return start_server(port=free_port(), env=env)


def ring(etcd_url: str, *arguments: str) -> Result:
    environment: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith("TIDINGS_")
    }
    environment.update({"TIDINGS_RING_ETCD": etcd_url, "TIDINGS_RING_PREFIX": PREFIX})
    return CliRunner().invoke(main, ["ring", *arguments], env=environment)


async def publish(client: httpx.AsyncClient, url: str, channel: str, n: int) -> int:
    body = {"channel": channel, "data": {"n": n}}
    response = await client.post(f"{url}/api/publish", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    offset: int = response.json()["offset"]
    return offset


async def first_received(client: httpx.AsyncClient, url: str, sub: Subscription) -> Publication:
    """Publish ``{"n": 1}`` until the subscription receives one (it subscribes from the
    time it is connected, so it may miss the first ones); return it."""
    receiving = asyncio.create_task(anext(sub))
    async with asyncio.timeout(15.0):
        while not receiving.done():
            await publish(client, url, sub.channels[0], 1)
            await asyncio.wait({receiving}, timeout=0.1)
    publication = receiving.result()
    assert isinstance(publication, Publication), publication
    return publication


async def take_until(sub: Subscription, offset: int) -> list[Publication | GapNotice]:
    """Events of the subscription up to the publication at ``offset`` (or a gap notice)."""
    events: list[Publication | GapNotice] = []
    async with asyncio.timeout(15.0):
        while True:
            events.append(event := await anext(sub))
            if isinstance(event, GapNotice) or event.offset >= offset:
                return events


async def test_a_member_waiting_outside_is_joined_then_left_by_the_cli(etcd_url: str) -> None:
    a = await asyncio.to_thread(start_node, etcd_url, "a", join=True)
    b: ServerProcess | None = None
    try:
        b = await asyncio.to_thread(start_node, etcd_url, "b", join=False)
        status = await asyncio.to_thread(ring, etcd_url, "status", "--json")
        shown = json.loads(status.output)
        assert set(shown["nodes"]) == {"a"}
        assert shown["joining"] == {"b": b.http_url}  # a member, waiting outside

        joined = await asyncio.to_thread(ring, etcd_url, "join", "--node", "b")
        assert joined.exit_code == 0, joined.output
        assert joined.output.startswith("node b is in the ring: version ")
        assert joined.output.rstrip().endswith("nodes a, b")

        channel = next(
            f"room:{n}" for n in range(1000) if HashRing(["a", "b"]).owner(f"room:{n}") == "b"
        )
        async with (
            httpx.AsyncClient() as client,
            Subscription(a.http_url, [channel], transport="ws", backoff=fast_backoff()) as sub,
        ):
            before = await first_received(client, a.http_url, sub)  # served by b, its owner
            first = before.offset
            left = await asyncio.to_thread(ring, etcd_url, "leave", "--node", "b")
            assert left.exit_code == 0, left.output
            assert left.output.rstrip().endswith("nodes a")
            assert b.process.poll() is None  # still running: a member serving nothing new
            second = await publish(client, a.http_url, channel, 2)
            after = await take_until(sub, second)  # on a now, resumed without a gap
            route = await client.get(f"{b.http_url}/route", params={"channel": channel})
        status = await asyncio.to_thread(ring, etcd_url, "status", "--json")
    finally:
        for server in (a, b):
            if server is not None:
                server.kill()
    # Every publication after the first received, in order, none lost (no gap notice).
    assert all(isinstance(event, Publication) for event in after)
    assert [event.offset for event in after if isinstance(event, Publication)] == list(
        range(first + 1, second + 1)
    )
    assert route.json() == {"url": a.http_url}
    assert json.loads(status.output)["joining"] == {"b": b.http_url}


def test_joining_a_node_that_is_not_a_member_is_one_line(etcd_url: str) -> None:
    result = ring(etcd_url, "join", "--node", "nobody")
    assert result.exit_code == ExitStatus.CONFIG
    assert result.output.count("\n") == 1
    assert "not a member" in result.output


def test_leaving_a_node_that_is_not_in_the_ring_is_one_line(etcd_url: str) -> None:
    result = ring(etcd_url, "leave", "--node", "nobody")
    assert result.exit_code == ExitStatus.CONFIG
    assert result.output.count("\n") == 1
    assert "not in the ring" in result.output
