"""Membership of the hash ring in etcd (brokers/ring/membership.py) against a real etcd of
the test's own: joins and leaves change the ring only in transactions (one version
each, none lost to concurrency), every member hears of each change by its watch, and a
node whose lease expires is taken out of the ring by the others."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Final

import pytest

from tests.support.etcd import etcd_server
from tests.support.server import free_port
from tidings.brokers.ring.etcd import EtcdError, EtcdGateway, Unchanged
from tidings.brokers.ring.membership import Membership
from tidings.brokers.ring.record import decode_ring, encode_ring
from tidings.core.handover import RingRecord

TTL_S: Final = 2
# A bound on awaited conditions: a lease of TTL_S expires within a few seconds.
CONDITION_TIMEOUT_S: Final = 15.0


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


@pytest.fixture
async def gateway(etcd_url: str) -> AsyncIterator[EtcdGateway]:
    etcd = EtcdGateway(etcd_url)
    try:
        yield etcd
    finally:
        await etcd.aclose()


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A prefix of the test's own: tests share the module's etcd."""
    return f"/test/{request.node.name}"


class RingChanges:
    """Set by every member's ``on_ring``: tests await a condition on the rings members
    hold, woken at each change (no polling)."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    def record(self, seen: list[RingRecord]) -> Callable[[RingRecord], None]:
        def on_ring(state: RingRecord) -> None:
            seen.append(state)
            self._changed.set()

        return on_ring

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Return once ``condition()`` holds; fail after CONDITION_TIMEOUT_S."""
        try:
            async with asyncio.timeout(CONDITION_TIMEOUT_S):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out: {what}")


@pytest.fixture
def changes() -> RingChanges:
    return RingChanges()


def member(
    changes: RingChanges, gateway: EtcdGateway, prefix: str, node: str, seen: list[RingRecord]
) -> Membership:
    return Membership(
        gateway,
        node,
        f"http://{node}.example:8000",
        prefix=prefix,
        ttl_s=TTL_S,
        on_ring=changes.record(seen),
    )


async def test_nodes_that_join_are_in_the_ring_every_member_sees(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    url_a, url_b = "http://a.example:8000", "http://b.example:8000"
    seen_a: list[RingRecord] = []
    seen_b: list[RingRecord] = []
    a, b = (
        member(changes, gateway, prefix, "a", seen_a),
        member(changes, gateway, prefix, "b", seen_b),
    )
    await a.join()
    await b.join()
    try:
        # b's join is a transition from {a} (a hands over: here, nothing), then final.
        await changes.until(lambda: a.ring.version == b.ring.version == 3, "the join is final")
        ring, _ = await a.read_ring()
        assert ring == RingRecord(3, {"a": url_a, "b": url_b})
        assert a.ring == b.ring == ring
        assert [(state.version, state.previous) for state in seen_a] == [
            (1, None),
            (2, {"a": url_a}),
            (3, None),
        ]
        await b.leave()  # returns once the ring without b is final
        await changes.until(lambda: a.ring.version == 5, "a hears b left")
        assert a.ring == RingRecord(5, {"a": url_a})
        assert [(state.version, state.previous) for state in seen_a[3:]] == [
            (4, {"a": url_a, "b": url_b}),
            (5, None),
        ]
    finally:
        await a.leave()
        await b.stop()
    # The last node leaving has no one to hand to: settled at once.
    assert (await a.read_ring())[0] == RingRecord(6, {})


async def test_concurrent_joins_each_make_one_transition_and_none_is_lost(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    nodes = [member(changes, gateway, prefix, f"n{n}", []) for n in range(6)]
    async with AsyncExitStack() as stack:
        await asyncio.gather(*(node.join() for node in nodes))
        for node in nodes:
            stack.push_async_callback(node.leave)
        await changes.until(
            lambda: all(
                not node.ring.in_transition and len(node.ring.nodes) == 6 for node in nodes
            ),
            "every node sees the last join final",
        )
        ring, _ = await nodes[0].read_ring()
        assert set(ring.nodes) == {f"n{n}" for n in range(6)}
        # The first join is settled at once; each other one is a transition, then final.
        assert ring.version == 11
        assert all(node.ring == ring for node in nodes)


async def test_a_planned_change_waits_for_the_transition_under_way(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    url_a, url_b = "http://a.example:8000", "http://b.example:8000"
    handing = asyncio.Event()
    release = asyncio.Event()
    release_second = asyncio.Event()  # a's hand-over in c's transition waits for it
    hand_overs: list[int] = []

    async def slow_hand_over(ring: RingRecord) -> None:
        hand_overs.append(ring.version)
        handing.set()
        await (release if len(hand_overs) == 1 else release_second).wait()

    a = Membership(
        gateway,
        "a",
        url_a,
        prefix=prefix,
        ttl_s=TTL_S,
        on_ring=changes.record([]),
        hand_over=slow_hand_over,
    )
    b = member(changes, gateway, prefix, "b", [])
    c = member(changes, gateway, prefix, "c", [])
    await a.join()
    try:
        await b.join()
        await handing.wait()  # a is handing over in the transition b's join began
        c_joins = asyncio.create_task(c.join())
        await changes.until(lambda: b.ring.version == 2, "b is in the ring")
        ring, _ = await a.read_ring()
        assert ring == RingRecord(2, {"a": url_a, "b": url_b}, {"a": url_a})  # c waits
        assert not c_joins.done()
        release.set()
        await c_joins
        ring, _ = await a.read_ring()
        assert ring.version == 4  # final at 3, then c's transition: a hands over in it
        assert ring.previous == {"a": url_a, "b": url_b}
        release_second.set()
        await changes.until(lambda: a.ring.version == 5, "c's join is final")
        assert hand_overs == [2, 4]
    finally:
        for node in (c, b, a):
            await node.leave()


async def test_a_crash_in_a_transition_takes_the_node_out_of_both_rings(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    url_a, url_c = "http://a.example:8000", "http://c.example:8000"
    never = asyncio.Event()

    async def stuck_hand_over(_ring: RingRecord) -> None:
        await never.wait()

    a = member(changes, gateway, prefix, "a", [])
    b = Membership(
        gateway,
        "b",
        "http://b.example:8000",
        prefix=prefix,
        ttl_s=TTL_S,
        on_ring=changes.record([]),
        hand_over=stuck_hand_over,
    )
    c = member(changes, gateway, prefix, "c", [])
    await a.join()
    await b.join()
    try:
        await changes.until(lambda: a.ring.version == 3, "b's join is final")
        await c.join()  # b gives keys to c, and never finishes: the ring stays in transition
        await changes.until(lambda: a.ring.version == 4, "a hears c join")
        await b.stop()  # a crash: its lease expires
        await changes.until(
            lambda: "b" not in a.ring.nodes and "b" not in (a.ring.previous or {}), "b is removed"
        )
        # Out of nodes and previous at once; a's and c's hand-over of the new version
        # make it final without b.
        await changes.until(lambda: not a.ring.in_transition, "the transition ends")
        assert a.ring == RingRecord(6, {"a": url_a, "c": url_c})
    finally:
        await c.leave()
        await a.leave()


async def test_a_node_whose_lease_expires_is_taken_out_by_the_others(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    survivor = member(changes, gateway, prefix, "alive", [])
    crashed = member(changes, gateway, prefix, "crashed", [])
    await survivor.join()
    await crashed.join()
    try:
        await changes.until(lambda: "crashed" in survivor.ring.nodes, "the survivor sees it join")
        await crashed.stop()  # no keep-alive from now on, nothing revoked: a crash
        await changes.until(lambda: "crashed" not in survivor.ring.nodes, "removed after its lease")
        ring, _ = await survivor.read_ring()
        assert ring.nodes == {"alive": "http://alive.example:8000"}
        assert ring.version == 4  # joined at 2, final at 3, removed at 4
    finally:
        await survivor.leave()


async def test_a_dead_node_missed_while_no_one_watched_is_removed_on_the_next_start(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    # The ring names a node that has no member key (it died while every node was down).
    await gateway.transact(
        [Unchanged(f"{prefix}/ring", 0)],
        {f"{prefix}/ring": encode_ring(RingRecord(1, {"ghost": "http://ghost:1"}))},
    )
    node = member(changes, gateway, prefix, "a", [])
    await node.join()
    try:
        await changes.until(lambda: "ghost" not in node.ring.nodes, "the ghost is removed")
        assert (await node.read_ring())[0].nodes == {"a": "http://a.example:8000"}
    finally:
        await node.leave()


async def test_a_ring_changed_elsewhere_is_only_written_at_the_revision_read(
    gateway: EtcdGateway, prefix: str
) -> None:
    key = f"{prefix}/ring"
    assert await gateway.transact([Unchanged(key, 0)], {key: b"1"})
    found = await gateway.get(key)
    assert found is not None
    assert not await gateway.transact([Unchanged(key, 0)], {key: b"2"})  # it exists now
    assert await gateway.transact([Unchanged(key, found.mod_revision)], {key: b"2"})
    assert not await gateway.transact([Unchanged(key, found.mod_revision)], {key: b"3"})
    again = await gateway.get(key)
    assert again is not None
    assert again.value == b"2"


async def test_an_unreachable_etcd_is_an_etcd_error() -> None:
    etcd = EtcdGateway(f"http://127.0.0.1:{free_port()}", timeout_s=1.0)
    try:
        with pytest.raises(EtcdError, match="did not answer"):
            await member(RingChanges(), etcd, "/x", "a", []).join()
    finally:
        await etcd.aclose()


async def test_a_node_that_lost_its_lease_joins_the_ring_again(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    seen: list[RingRecord] = []
    node = member(changes, gateway, prefix, "a", seen)
    await node.join()
    try:
        lease = node._lease
        assert lease is not None
        await gateway.revoke(lease)  # as if etcd had not heard from it for its whole lease
        # Its member key goes with the lease; the node, alive, renews, finds the lease
        # gone, and joins again. (No ring change need follow: nobody else watched.)
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            while node._lease == lease:  # noqa: ASYNC110  (a poll: the renewal has no event)
                await asyncio.sleep(0.05)
        ring, _ = await node.read_ring()
        assert ring.nodes == {"a": "http://a.example:8000"}
        assert await gateway.get(f"{prefix}/members/a") is not None
    finally:
        await node.leave()


def test_a_ring_record_without_previous_is_read_as_settled() -> None:
    written_by_an_older_node = b'{"version": 7, "nodes": {"a": "http://a:1"}}'
    assert decode_ring(written_by_an_older_node) == RingRecord(7, {"a": "http://a:1"}, None)
    settled = encode_ring(RingRecord(7, {"a": "http://a:1"}))
    assert b"previous" not in settled
    moving = RingRecord(8, {"b": "http://b:1"}, {"a": "http://a:1"})
    assert decode_ring(encode_ring(moving)) == moving
