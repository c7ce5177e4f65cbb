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
from tidings.brokers.ring.membership import Membership, RingState, encode_ring

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

    def record(self, seen: list[RingState]) -> Callable[[RingState], None]:
        def on_ring(state: RingState) -> None:
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
    changes: RingChanges, gateway: EtcdGateway, prefix: str, node: str, seen: list[RingState]
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
    seen_a: list[RingState] = []
    seen_b: list[RingState] = []
    a, b = (
        member(changes, gateway, prefix, "a", seen_a),
        member(changes, gateway, prefix, "b", seen_b),
    )
    await a.join()
    await b.join()
    try:
        await changes.until(lambda: set(a.ring.nodes) == {"a", "b"}, "a hears of b")
        ring, _ = await a.read_ring()
        assert ring == RingState(2, {"a": "http://a.example:8000", "b": "http://b.example:8000"})
        assert a.ring == b.ring == ring
        assert [state.version for state in seen_a] == [1, 2]
        await b.leave()
        await changes.until(lambda: set(a.ring.nodes) == {"a"}, "a hears b left")
        assert a.ring.version == 3
    finally:
        await a.leave()
        await b.stop()
    assert (await a.read_ring())[0] == RingState(4, {})


async def test_concurrent_joins_each_make_one_version_and_none_is_lost(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    nodes = [member(changes, gateway, prefix, f"n{n}", []) for n in range(6)]
    async with AsyncExitStack() as stack:
        await asyncio.gather(*(node.join() for node in nodes))
        for node in nodes:
            stack.push_async_callback(node.leave)
        ring, _ = await nodes[0].read_ring()
        assert set(ring.nodes) == {f"n{n}" for n in range(6)}
        assert ring.version == 6
        await changes.until(lambda: all(node.ring == ring for node in nodes), "every node sees it")


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
        assert ring.version == 3
    finally:
        await survivor.leave()


async def test_a_dead_node_missed_while_no_one_watched_is_removed_on_the_next_start(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    # The ring names a node that has no member key (it died while every node was down).
    await gateway.transact(
        [Unchanged(f"{prefix}/ring", 0)],
        {f"{prefix}/ring": encode_ring(RingState(1, {"ghost": "http://ghost:1"}))},
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
        with pytest.raises(EtcdError, match="lease/grant"):
            await member(RingChanges(), etcd, "/x", "a", []).join()
    finally:
        await etcd.aclose()


async def test_a_node_that_lost_its_lease_joins_the_ring_again(
    changes: RingChanges, gateway: EtcdGateway, prefix: str
) -> None:
    seen: list[RingState] = []
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
