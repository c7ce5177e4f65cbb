"""Failures of a ring kept in etcd (docs/modes/hashing.md, "Failures"), end to end: real
``tidings serve`` nodes and real etcd processes of the test's own.

* etcd paused (SIGSTOP): the nodes go on with the last ring they saw; once a node can no
  longer prove its lease lives, ``/ready`` says etcd is unreachable and since when, and
  publications of its channels, by WebSocket, the server API or forwarded by another
  node, are refused ``unavailable`` (nothing sequenced) while history and routing go on;
  etcd resumed, the node is ready and publishes again, and the ring is the same version
  with the same members (no node removed, none rejoined).
* an owner killed (SIGKILL): once its lease expires its channels are served by their
  next owner, in a new epoch, and a client resuming there hears ``recovered: false``.
* the etcd leader killed in a 3-member cluster (``ring_etcd`` naming every member):
  nodes stay ready and publishing, the ring and the leases stay, and a node still joins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.support.etcd import EtcdCluster, etcd_cluster
from tests.support.server import ServerProcess, free_port, start_server
from tests.support.ws import WsClient, ws_client
from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.record import RingView, read_ring_view
from tidings.client import GapNotice, Subscription
from tidings.client.backoff import Backoff
from tidings.core.channel import ChannelName
from tidings.core.publication import Publication
from tidings.core.ring import HashRing

API_KEY: Final = "ring-failures-api-key"
SECRET: Final = "ring-failures-cluster-secret-of-enough-bytes"
HEADERS: Final = {"Authorization": f"Bearer {API_KEY}"}
PREFIX: Final = "/failures"
CONDITION_TIMEOUT_S: Final = 40.0
POLL_S: Final = 0.02


def start_node(node: str, env: dict[str, str], *arguments: str) -> ServerProcess:
    return start_server(
        *arguments,
        port=free_port(),
        env={
            "TIDINGS_API_KEY": API_KEY,
            "TIDINGS_NODE_ID": node,
            "TIDINGS_CLUSTER_SECRET": SECRET,
            "TIDINGS_SHUTDOWN_TIMEOUT": "1s",
            "TIDINGS_NAMESPACES__ROOM__CLIENT_PUBLISH": "true",
            "TIDINGS_NAMESPACES__ROOM__HISTORY_SIZE": "100",
            **env,
        },
    )


async def start_nodes(
    nodes: tuple[str, ...], env: dict[str, str], *arguments: str
) -> dict[str, ServerProcess]:
    started = await asyncio.gather(
        *(asyncio.to_thread(start_node, node, env, *arguments) for node in nodes),
        return_exceptions=True,
    )
    servers = [server for server in started if isinstance(server, ServerProcess)]
    if len(servers) != len(nodes):
        for server in servers:
            server.kill()
        raise next(error for error in started if isinstance(error, BaseException))
    return dict(zip(nodes, servers, strict=True))


async def until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (an HTTP look at a node) until it holds."""
    try:
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            while not await check():  # noqa: ASYNC110  (a poll of HTTP endpoints)
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        pytest.fail(f"timed out: {what}")


def owned_channel(servers: dict[str, ServerProcess], owner: str) -> str:
    """A ``room:`` channel the ring of ``servers`` gives to ``owner``."""
    ring = HashRing(servers)
    return next(f"room:{n}" for n in range(1000) if ring.owner(f"room:{n}") == owner)


async def routes_agree(client: httpx.AsyncClient, servers: dict[str, ServerProcess]) -> bool:
    """Whether every node routes a sample of channels by the ring of ``servers``."""
    ring = HashRing(servers)
    for server in servers.values():
        for n in range(20):
            channel = f"room:{n}"
            answer = await client.get(f"{server.http_url}/route", params={"channel": channel})
            if answer.json()["url"] != servers[ring.owner(channel)].http_url:
                return False
    return True


async def publish(
    client: httpx.AsyncClient, server: ServerProcess, channel: str, data: Any
) -> httpx.Response:
    body = {"channel": channel, "data": data}
    return await client.post(f"{server.http_url}/api/publish", json=body, headers=HEADERS)


async def ring_and_members(cluster: EtcdCluster) -> tuple[RingView, dict[str, int]]:
    """The ring in etcd, and the revision each member key was last written at (a node
    that rejoins writes its key anew)."""
    gateway = EtcdGateway(cluster.urls)
    try:
        view = await read_ring_view(gateway, PREFIX)
        keys, _ = await gateway.get_prefix(f"{PREFIX}/members/")
        return view, {kv.key: kv.mod_revision for kv in keys}
    finally:
        await gateway.aclose()


async def unready_node(client: httpx.AsyncClient, servers: dict[str, ServerProcess]) -> str:
    """The first node whose ``/ready`` answers 503 (polled until one does)."""
    found: list[str] = []

    async def one_unready() -> bool:
        for node, server in servers.items():
            if (await client.get(f"{server.http_url}/ready")).status_code == 503:
                found.append(node)
                return True
        return False

    await until(one_unready, "a node is not ready")
    return found[0]


@dataclass
class CutOff:
    """What a node cut off from etcd answered, looked at before etcd was resumed."""

    node: str
    own: httpx.Response  # POST /api/publish of its channel, on it
    forwarded: httpx.Response  # the same on the other node, forwarded to it
    socket: dict[str, Any]  # a WebSocket publish on it
    ready: httpx.Response
    history: httpx.Response
    route: httpx.Response


async def look_at_the_first_cut_off(
    client: httpx.AsyncClient,
    servers: dict[str, ServerProcess],
    channels: dict[str, str],
    websockets: dict[str, WsClient],
) -> CutOff:
    """Once a node is unready, try each way to publish in its channel, then look at what
    must go on: its history and its routing. Quick: etcd is resumed right after."""
    node = await unready_node(client, servers)
    other = next(name for name in servers if name != node)
    server, channel = servers[node], channels[node]
    return CutOff(
        node,
        own=await publish(client, server, channel, {"n": 2}),
        forwarded=await publish(client, servers[other], channel, {"n": 3}),
        socket=await websockets[node].request("publish", channel=channel, data={"n": 4}),
        ready=await client.get(f"{server.http_url}/ready"),
        history=await client.get(
            f"{server.http_url}/api/history", params={"channel": channel}, headers=HEADERS
        ),
        route=await client.get(f"{server.http_url}/route", params={"channel": channel}),
    )


async def all_ready(client: httpx.AsyncClient, servers: dict[str, ServerProcess]) -> bool:
    for server in servers.values():
        if (await client.get(f"{server.http_url}/ready")).status_code != 200:
            return False
    return True


async def test_nodes_cut_off_from_etcd_stop_sequencing_their_channels_and_say_so(
    tmp_path: Path,
) -> None:
    with etcd_cluster(tmp_path, 1) as cluster:
        etcd = cluster.members[0]
        # A lease of 8 s: a node is unconfirmed 6 s after its last keep-alive was sent,
        # leaving 2 s to look at it and resume etcd before any lease could expire.
        env = {"TIDINGS_RING_ETCD": etcd.client_url, "TIDINGS_RING_PREFIX": PREFIX}
        servers = await start_nodes(("a", "b"), {**env, "TIDINGS_RING_TTL": "8s"})
        try:
            async with httpx.AsyncClient(timeout=5.0) as client, AsyncExitStack() as stack:
                await until(lambda: routes_agree(client, servers), "both nodes route alike")
                before = await ring_and_members(cluster)
                channels = {node: owned_channel(servers, node) for node in servers}
                websockets = {}
                for node, server in servers.items():
                    answer = await publish(client, server, channels[node], {"n": 1})
                    assert answer.status_code == 200, answer.text
                    websockets[node] = await stack.enter_async_context(ws_client(server.ws_url))
                    await websockets[node].result("connect")
                etcd.pause()
                try:
                    seen = await look_at_the_first_cut_off(client, servers, channels, websockets)
                finally:
                    etcd.resume()
                assert seen.ready.status_code == 503
                assert "etcd is unreachable since" in seen.ready.json()["error"]["message"]
                for refused in (seen.own, seen.forwarded):
                    assert refused.status_code == 503, refused.text
                    error = refused.json()["error"]
                    assert error["code"] == "unavailable"
                    assert "cannot confirm that it owns channel" in error["message"]
                assert seen.socket["error"]["code"] == "unavailable", seen.socket
                # History and routing go on from the last ring: one publication, n=1.
                assert seen.history.status_code == 200
                assert [p["data"] for p in seen.history.json()["publications"]] == [{"n": 1}]
                assert seen.route.json()["url"] == servers[seen.node].http_url

                await until(lambda: all_ready(client, servers), "both nodes ready again")
                for node, server in servers.items():
                    answer = await publish(client, server, channels[node], {"n": 5})
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["offset"] == 2  # nothing was sequenced meanwhile
                assert await ring_and_members(cluster) == before
        finally:
            for server in servers.values():
                server.kill()


async def test_a_dead_owners_channels_go_to_the_next_owner_in_a_new_epoch(
    tmp_path: Path,
) -> None:
    with etcd_cluster(tmp_path, 1) as cluster:
        # The spelling: a broker URL naming etcd, with the ring's options.
        broker = f"{cluster.members[0].client_url.replace('http://', 'ring+etcd://')}"
        servers = await start_nodes(("a", "b"), {}, "--broker", f"{broker}?prefix={PREFIX}&ttl=2s")
        a, b = servers["a"], servers["b"]
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await until(lambda: routes_agree(client, servers), "both nodes route alike")
                channel = owned_channel(servers, "a")
                async with ws_client(a.ws_url) as ws:
                    await ws.result("connect")
                    await ws.result("subscribe", channel=channel)
                    for n in range(3):
                        assert (await publish(client, a, channel, {"n": n})).status_code == 200
                    pubs = await ws.publications(3)
                position = {"epoch": pubs[-1]["epoch"], "offset": pubs[-1]["offset"]}
                a.kill()

                async def served_by_b() -> bool:
                    answer = await client.get(f"{b.http_url}/route", params={"channel": channel})
                    return bool(answer.json()["url"] == b.http_url)

                await until(served_by_b, "b serves a's channel once a's lease expired")
                async with ws_client(b.ws_url) as ws:
                    await ws.result("connect")
                    resumed = await ws.result("subscribe", channel=channel, since=position)
                    assert resumed["recovered"] is False  # told, never a silent gap
                    assert resumed["epoch"] != position["epoch"]
                    answer = await publish(client, b, channel, {"n": 3})
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["epoch"] == resumed["epoch"]
                    [pub] = await ws.publications(1)
                    assert pub["data"] == {"n": 3}
        finally:
            for server in servers.values():
                server.kill()


async def test_the_loss_of_the_etcd_leader_leaves_the_ring_and_the_publications_alone(
    tmp_path: Path,
) -> None:
    with etcd_cluster(tmp_path, 3) as cluster:
        # The default lease (10 s): a node has 10 - 2.5 - 3.3 s at least, after the kill,
        # to renew through another member once the others have elected a leader (1-2 s).
        env = {"TIDINGS_RING_ETCD": cluster.urls, "TIDINGS_RING_PREFIX": PREFIX}
        servers = await start_nodes(("a", "b"), env)
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await until(lambda: routes_agree(client, servers), "both nodes route alike")
                before = await ring_and_members(cluster)
                channels = {node: owned_channel(servers, node) for node in servers}
                refused: list[str] = []
                offsets = dict.fromkeys(servers, 0)
                publishing = True

                async def publish_all_along() -> None:
                    # Every node publishes in its own channel and the other's (forwarded).
                    while publishing:
                        for node, server in servers.items():
                            for channel in channels.values():
                                answer = await publish(client, server, channel, {"by": node})
                                if answer.status_code != 200:
                                    refused.append(answer.text)
                                elif channel == channels[node]:
                                    offsets[node] = answer.json()["offset"]
                        await asyncio.sleep(0.05)

                publisher = asyncio.create_task(publish_all_along())
                await asyncio.sleep(1.0)
                leader = await asyncio.to_thread(cluster.leader)
                leader.kill()
                await asyncio.sleep(15.0)  # a lease and a half: keep-alives moved on
                at_kill = dict(offsets)
                await asyncio.sleep(1.0)
                publishing = False
                await publisher
                assert refused == []
                assert all(offsets[node] > at_kill[node] > 0 for node in servers)
                for server in servers.values():
                    assert (await client.get(f"{server.http_url}/ready")).status_code == 200
                survivors = EtcdCluster([m for m in cluster.members if m is not leader])
                assert await ring_and_members(survivors) == before
                # A ring change still works: c joins, and every node routes by it.
                servers["c"] = await asyncio.to_thread(
                    start_node, "c", {**env, "TIDINGS_RING_ETCD": cluster.urls}
                )
                await until(lambda: routes_agree(client, servers), "every node routes with c")
        finally:
            for server in servers.values():
                server.kill()


async def test_a_key_that_comes_back_after_its_owner_died_is_not_resumed_across_the_gap(
    tmp_path: Path,
) -> None:
    # b owns every key alone, then a joins and takes some; a dies, and they come back
    # to b, which still holds their history from before: stale, for a published since.
    with etcd_cluster(tmp_path, 1) as cluster:
        env = {
            "TIDINGS_RING_ETCD": cluster.urls,
            "TIDINGS_RING_PREFIX": PREFIX,
            "TIDINGS_RING_TTL": "2s",
        }
        servers = await start_nodes(("b",), env)
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await until(lambda: routes_agree(client, servers), "b routes alone")
                b = servers["b"]
                channel = owned_channel({"a": b, "b": b}, "a")  # a's, once a joins
                for n in range(2):
                    assert (await publish(client, b, channel, {"n": n})).status_code == 200
                before = await client.get(
                    f"{b.http_url}/api/history", params={"channel": channel}, headers=HEADERS
                )
                position = {"epoch": before.json()["epoch"], "offset": before.json()["offset"]}
                servers["a"] = await asyncio.to_thread(start_node, "a", env)
                await until(lambda: routes_agree(client, servers), "a has joined")
                by_a = await publish(client, b, channel, {"n": 2})  # forwarded to a
                assert by_a.status_code == 200, by_a.text
                servers["a"].kill()
                await until(lambda: routes_agree(client, {"b": b}), "a's keys are b's again")
                async with ws_client(b.ws_url) as ws:
                    await ws.result("connect")
                    resumed = await ws.result("subscribe", channel=channel, since=position)
                # b holds n=0, n=1 at that position; it must not say nothing followed.
                assert resumed["recovered"] is False
                assert resumed["epoch"] not in (position["epoch"], by_a.json()["epoch"])
        finally:
            for server in servers.values():
                server.kill()


async def test_a_client_sent_to_an_owner_that_died_finds_the_next_owner(
    tmp_path: Path,
) -> None:
    # The client was given node b, which sent it to a, the owner; a dies. The client
    # does not knock at a for ever: it asks b again, which (once a's lease expired)
    # serves the channel itself, in a new epoch, and says so.
    with etcd_cluster(tmp_path, 1) as cluster:
        env = {"TIDINGS_RING_ETCD": cluster.members[0].client_url}
        servers = await start_nodes(
            ("a", "b"), {**env, "TIDINGS_RING_PREFIX": PREFIX, "TIDINGS_RING_TTL": "2s"}
        )
        a, b = servers["a"], servers["b"]
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                await until(lambda: routes_agree(client, servers), "both nodes route alike")
                channel = owned_channel(servers, "a")
                subscription = Subscription(
                    b.http_url,
                    [channel],
                    transport="ws",
                    backoff=Backoff(base_s=0.05, cap_s=0.5),
                )
                async with subscription as sub:
                    await until(
                        lambda: _has_position(sub, channel), "the client is subscribed at a"
                    )
                    assert (await publish(client, a, channel, {"n": 0})).status_code == 200
                    first = await _next_event(sub)
                    assert isinstance(first, Publication)
                    a.kill()

                    async def served_by_b() -> bool:
                        answer = await client.get(
                            f"{b.http_url}/route", params={"channel": channel}
                        )
                        return bool(answer.json()["url"] == b.http_url)

                    await until(served_by_b, "b serves a's channel once a's lease expired")
                    gap = await _next_event(sub)
                    assert isinstance(gap, GapNotice)  # told, never a silent gap
                    answer = await publish(client, b, channel, {"n": 1})
                    assert answer.status_code == 200, answer.text
                    moved = await _next_event(sub)
                    assert isinstance(moved, Publication)
                    assert moved.data == b'{"n":1}'
        finally:
            for server in servers.values():
                server.kill()


async def _has_position(sub: Subscription, channel: str) -> bool:
    return ChannelName(channel) in sub.positions


async def _next_event(sub: Subscription) -> object:
    async with asyncio.timeout(CONDITION_TIMEOUT_S):
        return await anext(sub)
