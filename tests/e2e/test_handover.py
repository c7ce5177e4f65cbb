"""Scaling without loss (server/handover.py, docs/modes/hashing.md): real ``tidings serve``
nodes over a real etcd of the test's own. Nodes ``a`` and ``b`` serve subscribers (the
Python client, over WebSocket and over SSE) while a publisher publishes on and on
through ``a``'s server API; node ``c`` joins, and later ``b`` leaves on SIGTERM. Every
subscriber whose channel moved ends on its new owner, having received every
acknowledged publication exactly once and in order, and never a gap notice (it resumed
with ``recovered: true``); a publisher retrying an earlier publication's key after the
move is answered ``duplicate``, and nothing is published twice. An owner killed after a
hand-over leaves its channels to the next owner in a new epoch (``recovered: false``,
never offsets given twice). Both stores a ring node keeps its channels in (memory,
sqlite) are run."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.client.conftest import fast_backoff
from tests.support.etcd import etcd_server
from tests.support.server import ServerProcess, free_port, start_server
from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.record import read_ring_view
from tidings.client import GapNotice, Subscription
from tidings.core.node_call import NODE_AUTH_HEADER, sign_node_call
from tidings.core.publication import Position, Publication
from tidings.core.ring import HashRing

API_KEY: Final = "handover-api-key"
SECRET: Final = "a-cluster-secret-of-at-least-32-bytes"
AUTH: Final = {"authorization": f"Bearer {API_KEY}"}
# A bound on awaited conditions (transitions, deliveries): never a timed assertion.
CONDITION_TIMEOUT_S: Final = 60.0
# Publications made after each ring change is final, before the publisher stops.
PUBLISHED_AFTER: Final = 40


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


@dataclass(frozen=True)
class Cluster:
    """Where the nodes of one test keep their ring and, with sqlite, their files."""

    etcd_url: str
    prefix: str
    data: Path | None

    def start(self, node: str) -> ServerProcess:
        return start_node(self, node)


@pytest.fixture(params=["memory", "sqlite"])
def cluster(etcd_url: str, request: pytest.FixtureRequest, tmp_path: Path) -> Cluster:
    store: str = request.param
    # A prefix of the test's own: the tests share the module's etcd.
    prefix = f"/test/{request.node.name}"
    return Cluster(etcd_url, prefix, tmp_path if store == "sqlite" else None)


def start_node(cluster: Cluster, node: str) -> ServerProcess:
    env = {
        "TIDINGS_API_KEY": API_KEY,
        "TIDINGS_CLUSTER_SECRET": SECRET,
        "TIDINGS_NODE_ID": node,
        "TIDINGS_RING_ETCD": cluster.etcd_url,
        "TIDINGS_RING_PREFIX": cluster.prefix,
        "TIDINGS_RING_TTL": "2s",
        "TIDINGS_RING_MOVE_RATE": "50",
        "TIDINGS_HANDOVER_TIMEOUT": "10s",
        "TIDINGS_SHUTDOWN_TIMEOUT": "15s",
        "TIDINGS_NAMESPACES__ROOM__HISTORY_SIZE": "1000",
    }
    if cluster.data is not None:
        env["TIDINGS_DATA"] = str(cluster.data / node)
    return start_server(port=free_port(), env=env)


def pick_channels() -> dict[str, str]:
    """Channels by what happens to them: one of each fate, so each kind of move is seen."""
    two, three, after_leave = HashRing(["a", "b"]), HashRing(["a", "b", "c"]), HashRing(["a", "c"])
    fates: dict[str, Callable[[str], bool]] = {
        "a-to-c": lambda c: two.owner(c) == "a" and three.owner(c) == "c",
        "b-to-c": lambda c: two.owner(c) == "b" and three.owner(c) == "c",
        "b-stays-then-to-a": lambda c: three.owner(c) == "b" and after_leave.owner(c) == "a",
        "b-stays-then-to-c": lambda c: three.owner(c) == "b" and after_leave.owner(c) == "c",
        "a-stays": lambda c: three.owner(c) == "a" and after_leave.owner(c) == "a",
    }
    names = [f"room:h{n}" for n in range(2000)]
    return {fate: next(c for c in names if test(c)) for fate, test in fates.items()}


@dataclass
class Acked:
    """What the publisher was acknowledged, per channel: (offset, n, key), in order."""

    by_channel: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)
    epochs: dict[str, set[str]] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


async def publish(
    client: httpx.AsyncClient, url: str, channel: str, n: int, key: str
) -> dict[str, Any]:
    """Publish ``{"n": n}`` with ``key``; retried with the same key until answered 200
    (a node moving channels may answer 503: the key makes the retry safe)."""
    body = {"channel": channel, "data": {"n": n}, "key": key}
    async with asyncio.timeout(CONDITION_TIMEOUT_S):
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await client.post(f"{url}/api/publish", json=body, headers=AUTH)
                if response.status_code == 200:
                    answer: dict[str, Any] = response.json()
                    return answer
            await asyncio.sleep(0.05)


async def run_publisher(
    client: httpx.AsyncClient, url: str, channels: list[str], acked: Acked, stop: asyncio.Event
) -> None:
    n = 0
    while not stop.is_set():
        for channel in channels:
            n += 1
            key = f"k{n}"
            answer = await publish(client, url, channel, n, key)
            assert not answer.get("duplicate"), answer  # every key is new
            acked.by_channel.setdefault(channel, []).append((answer["offset"], n, key))
            acked.epochs.setdefault(channel, set()).add(answer["epoch"])
            acked.changed.set()
        await asyncio.sleep(0.01)  # about a hundred publications a second in all


@dataclass
class Watched:
    """One subscription and everything it received."""

    channel: str
    transport: str
    subscription: Subscription
    events: list[Publication | GapNotice] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        async for event in self.subscription:
            self.events.append(event)
            self.changed.set()

    def offsets(self) -> list[int]:
        return [e.offset for e in self.events if isinstance(e, Publication)]


async def until(condition: Callable[[], bool], what: str, *events: asyncio.Event) -> None:
    """Return once ``condition()`` holds, woken by ``events`` (or polled, if none)."""
    try:
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            while not condition():
                for event in events:
                    event.clear()
                if events:
                    await asyncio.wait(
                        [asyncio.ensure_future(e.wait()) for e in events],
                        timeout=0.5,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                else:
                    await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out: {what}")


async def ring_is(cluster: Cluster, nodes: set[str]) -> None:
    """Wait until the ring in etcd is final with ``nodes``."""
    gateway = EtcdGateway(cluster.etcd_url)
    try:
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            while True:
                view = await read_ring_view(gateway, cluster.prefix)
                if not view.ring.in_transition and set(view.ring.nodes) == nodes:
                    return
                await asyncio.sleep(0.05)
    finally:
        await gateway.aclose()


async def subscribers_on(client: httpx.AsyncClient, server: ServerProcess) -> dict[str, int]:
    response = await client.get(f"{server.http_url}/api/channels", headers=AUTH)
    assert response.status_code == 200, response.text
    return {c: v["subscribers"] for c, v in response.json()["channels"].items()}


def assert_exactly_once_in_order(watched: Watched, acked: Acked, since: int) -> None:
    """The subscription holds every acknowledged publication after offset ``since``,
    once each, in order, with the data published, and no gap notice."""
    assert not [e for e in watched.events if isinstance(e, GapNotice)], watched
    expected = [(offset, n) for offset, n, _ in acked.by_channel[watched.channel] if offset > since]
    received = [
        (e.offset, json.loads(e.data)["n"])
        for e in watched.events
        if isinstance(e, Publication) and e.offset > since
    ]
    assert received == expected, (watched.channel, watched.transport)


@contextlib.asynccontextmanager
async def watching(url: str, channels: list[str]) -> AsyncIterator[list[Watched]]:
    async with contextlib.AsyncExitStack() as stack:
        watched: list[Watched] = []
        for channel in channels:
            for transport in ("ws", "sse"):
                subscription = await stack.enter_async_context(
                    Subscription(url, [channel], transport=transport, backoff=fast_backoff())
                )
                watched.append(Watched(channel, transport, subscription))
        tasks = [asyncio.create_task(w.run()) for w in watched]
        try:
            yield watched
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def test_nodes_joining_and_leaving_hand_channels_over_without_loss(cluster: Cluster) -> None:
    fates = pick_channels()
    channels = list(fates.values())
    servers: dict[str, ServerProcess] = {}
    try:
        servers["a"] = await asyncio.to_thread(cluster.start, "a")
        servers["b"] = await asyncio.to_thread(cluster.start, "b")
        await ring_is(cluster, {"a", "b"})
        a = servers["a"]
        async with (
            httpx.AsyncClient(timeout=10.0) as client,
            watching(a.http_url, channels) as subs,
        ):
            acked = Acked()
            stop = asyncio.Event()
            publisher = asyncio.create_task(
                run_publisher(client, a.http_url, channels, acked, stop)
            )
            try:
                # Every subscription is live before the ring changes.
                await until(
                    lambda: all(w.offsets() for w in subs),
                    "first deliveries",
                    acked.changed,
                    *(w.changed for w in subs),
                )
                since = {id(w): w.offsets()[0] for w in subs}

                # -- c joins --------------------------------------------------------------
                servers["c"] = await asyncio.to_thread(cluster.start, "c")
                await ring_is(cluster, {"a", "b", "c"})
                count = sum(len(v) for v in acked.by_channel.values())
                await until(
                    lambda: (
                        sum(len(v) for v in acked.by_channel.values()) >= count + PUBLISHED_AFTER
                    ),
                    "publications after the join",
                    acked.changed,
                )
                # A publisher retrying, after the move, a key published before it.
                moved = fates["b-to-c"]
                offset, n, key = acked.by_channel[moved][0]
                retried = await publish(client, a.http_url, moved, n, key)

                # -- b leaves (SIGTERM) --------------------------------------------------
                await asyncio.to_thread(servers["b"].stop, signal.SIGTERM)
                await ring_is(cluster, {"a", "c"})
                count = sum(len(v) for v in acked.by_channel.values())
                await until(
                    lambda: (
                        sum(len(v) for v in acked.by_channel.values()) >= count + PUBLISHED_AFTER
                    ),
                    "publications after the leave",
                    acked.changed,
                )
            finally:
                stop.set()
                await publisher
            # Every subscription catches up with the last acknowledged publication.
            tops = {c: acked.by_channel[c][-1][0] for c in channels}
            await until(
                lambda: all(w.offsets() and w.offsets()[-1] >= tops[w.channel] for w in subs),
                "every subscription has the last publication",
                *(w.changed for w in subs),
            )
            on_c = await subscribers_on(client, servers["c"])
            on_a = await subscribers_on(client, a)
        for w in subs:
            assert_exactly_once_in_order(w, acked, since[id(w)])
    finally:
        for server in servers.values():
            server.kill()
    # One epoch per channel: the new owners went on with the old owners' offsets.
    assert all(len(epochs) == 1 for epochs in acked.epochs.values()), acked.epochs
    # The retry was not published again: the original position, marked duplicate.
    assert retried == {
        "epoch": next(iter(acked.epochs[moved])),
        "offset": offset,
        "duplicate": True,
    }
    # Subscribers ended on the channels' final owners (a WebSocket and an SSE stream each).
    final = HashRing(["a", "c"])
    for channel in channels:
        where = on_c if final.owner(channel) == "c" else on_a
        assert where.get(channel) == 2, (channel, on_a, on_c)


async def test_the_handover_endpoint_takes_only_signed_messages_of_its_ring(
    cluster: Cluster,
) -> None:
    node = await asyncio.to_thread(cluster.start, "solo")
    message = {
        "giver": "other",
        "channel": "room:1",
        "epoch": "someEpoch",
        "top": 1,
        "snapshot": True,
        "publications": [{"offset": 1, "ts": 1, "data": {"n": 1}}],
    }
    raw = json.dumps(message).encode()
    try:
        await ring_is(cluster, {"solo"})
        async with httpx.AsyncClient() as client:
            unsigned = await client.post(f"{node.http_url}/node/handover", content=raw)

            def signed(version: int) -> dict[str, str]:
                auth = sign_node_call(
                    SECRET.encode(),
                    "POST",
                    "/node/handover",
                    raw,
                    now_s=int(time.time()),
                    ring_version=version,
                )
                return {NODE_AUTH_HEADER: auth}

            # Its ring is version 1 and settled: nothing moves to it from "other".
            stale = await client.post(
                f"{node.http_url}/node/handover", content=raw, headers=signed(0)
            )
            not_moving = await client.post(
                f"{node.http_url}/node/handover", content=raw, headers=signed(1)
            )
            history = await client.get(
                f"{node.http_url}/api/history", params={"channel": "room:1"}, headers=AUTH
            )
    finally:
        node.kill()
    assert unsigned.status_code == 401
    assert (stale.status_code, stale.json()["error"]["code"]) == (409, "stale_ring")
    assert (not_moving.status_code, not_moving.json()["error"]["code"]) == (409, "stale_ring")
    assert history.json()["publications"] == []  # nothing was adopted


async def test_an_owner_killed_after_a_hand_over_leaves_its_channels_in_a_new_epoch(
    cluster: Cluster,
) -> None:
    # b hands the channel to c as c joins; c is then killed, and the channel goes back to
    # b, which still holds the copy it handed over: b must not continue that epoch (c
    # gave offsets past it), so a client resuming there hears recovered: false.
    channel = pick_channels()["b-to-c"]
    servers: dict[str, ServerProcess] = {}
    try:
        for node in ("a", "b"):
            servers[node] = await asyncio.to_thread(cluster.start, node)
        await ring_is(cluster, {"a", "b"})
        a = servers["a"]
        async with httpx.AsyncClient(timeout=10.0) as client:
            before = await publish(client, a.http_url, channel, 1, "k1")
            servers["c"] = await asyncio.to_thread(cluster.start, "c")
            await ring_is(cluster, {"a", "b", "c"})
            on_c = await publish(client, a.http_url, channel, 2, "k2")  # sequenced by c
            servers["c"].kill()
            await ring_is(cluster, {"a", "b"})  # removed once its lease expired
            after = await publish(client, a.http_url, channel, 3, "k3")  # sequenced by b
            assert after["epoch"] != before["epoch"], (before, on_c, after)
            async with Subscription(
                a.http_url,
                [channel],
                transport="ws",
                since={channel: Position(on_c["epoch"], on_c["offset"])},
                backoff=fast_backoff(),
            ) as resumed:
                async with asyncio.timeout(CONDITION_TIMEOUT_S):
                    notice = await anext(resumed)
    finally:
        for server in servers.values():
            server.kill()
    assert (on_c["epoch"], on_c["offset"]) == (before["epoch"], before["offset"] + 1)
    assert after["offset"] == 1
    assert isinstance(notice, GapNotice)
    assert notice.since == Position(on_c["epoch"], on_c["offset"])
