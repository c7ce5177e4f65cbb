"""A member of the ring that cannot reach etcd (brokers/ring/membership.py with
core/lease_deadline.py), against real etcd processes of the test's own: it becomes
unconfirmed before etcd could have let its lease expire, nothing changes in the ring
while etcd is away, and it is confirmed again, with the same lease, once etcd answers;
with several endpoints, the loss of a member (the leader) costs no lease and no ring
change."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.support.etcd import etcd_cluster
from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.membership import Membership
from tidings.core.handover import RingRecord

# Long enough that a paused etcd is resumed well within the margin (a quarter: 2 s).
TTL_S: Final = 8
CONDITION_TIMEOUT_S: Final = 30.0
POLL_S: Final = 0.02


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the lease's state has no event) until it holds."""
    try:
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            while not condition():  # noqa: ASYNC110  (a poll: no event to await)
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        pytest.fail(f"timed out: {what}")


def member(gateway: EtcdGateway, node: str, prefix: str = "/fence") -> Membership:
    return Membership(gateway, node, f"http://{node}.example:8000", prefix=prefix, ttl_s=TTL_S)


def remaining_ttl_s(url: str, lease: int) -> int:
    """What etcd says is left of ``lease`` (-1: it has expired)."""
    answer = httpx.post(f"{url}/v3/lease/timetolive", json={"ID": str(lease)}, timeout=5.0)
    return int(answer.json().get("TTL", "-1"))


async def test_a_node_cut_off_from_etcd_is_unconfirmed_before_its_lease_expires(
    tmp_path: Path,
) -> None:
    with etcd_cluster(tmp_path, 1) as cluster:
        etcd = cluster.members[0]
        gateway = EtcdGateway(etcd.client_url)
        a, b = member(gateway, "a"), member(gateway, "b")
        try:
            await a.join()
            await b.join()
            await until(
                lambda: (
                    set(a.ring.nodes) == {"a", "b"}
                    and not a.ring.in_transition
                    and a.ring == b.ring
                ),
                "a and b see b's join made final",
            )
            assert a.is_confirmed()
            assert b.is_confirmed()
            ring, leases = a.ring, (a._lease, b._lease)
            etcd.pause()
            try:
                await until(
                    lambda: not a.is_confirmed() or not b.is_confirmed(), "a node unconfirmed"
                )
                unconfirmed_at = time.monotonic()
                first = a if not a.is_confirmed() else b
                assert first.lease.unreachable_since_s is not None
            finally:
                etcd.resume()
            # etcd, back, still holds every lease: the node stopped before it could expire.
            for lease in leases:
                assert lease is not None
                assert remaining_ttl_s(etcd.client_url, lease) > 0
            await until(lambda: a.is_confirmed() and b.is_confirmed(), "both confirmed again")
            assert time.monotonic() > unconfirmed_at
            # No flapping: no node removed, none rejoined, the ring as it was.
            assert (a._lease, b._lease) == leases
            assert (await a.read_ring())[0] == ring
            assert a.ring == b.ring == ring
            assert a.lease.unreachable_since_s is None
        finally:
            await a.leave()
            await b.leave()
            await gateway.aclose()


async def test_the_loss_of_the_etcd_leader_costs_no_lease_and_no_ring_change(
    tmp_path: Path,
) -> None:
    with etcd_cluster(tmp_path, 3) as cluster:
        gateways = [EtcdGateway(cluster.urls) for _ in range(3)]
        a, b, c = (member(gateway, node) for gateway, node in zip(gateways, "abc", strict=True))
        try:
            leader = await asyncio.to_thread(cluster.leader)
            # Every node talks to the leader, and watches there, so that its loss is theirs.
            for gateway in gateways:
                gateway._current = cluster.members.index(leader)
            await a.join()
            await b.join()
            await until(
                lambda: (
                    set(a.ring.nodes) == set(b.ring.nodes) == {"a", "b"}
                    and not a.ring.in_transition
                    and a.ring == b.ring
                ),
                "joined, the ring final",
            )
            ring, leases = a.ring, (a._lease, b._lease)
            unconfirmed: list[str] = []
            watching = True

            async def watch_confirmation() -> None:
                while watching:
                    unconfirmed.extend(n.node_id for n in (a, b) if not n.is_confirmed())
                    await asyncio.sleep(POLL_S)

            watcher = asyncio.create_task(watch_confirmation())
            leader.kill()
            # Over two leases, keep-alives move to the other members; none is missed.
            await asyncio.sleep(2 * TTL_S)
            watching = False
            await watcher
            assert unconfirmed == []
            assert all(g.endpoint != leader.client_url for g in gateways[:2])
            assert (a._lease, b._lease) == leases
            assert (await a.read_ring())[0] == ring
            # The ring still changes: c joins (a transition, handed at once: nothing is
            # stored here, then the final ring), and a and b hear of it by their watches.
            await c.join()
            nodes = {**ring.nodes, "c": "http://c.example:8000"}
            expected = RingRecord(ring.version + 2, nodes)
            await until(lambda: a.ring == b.ring == c.ring == expected, "every node sees c")
        finally:
            for node in (a, b, c):
                await node.leave()
            for gateway in gateways:
                await gateway.aclose()


async def test_a_node_told_its_lease_expired_stays_fenced_until_it_has_renewed_then_joins_again(
    tmp_path: Path,
) -> None:
    with etcd_cluster(tmp_path, 1) as cluster:
        gateway = EtcdGateway(cluster.urls)
        # What the node holds when it hears its lease is gone: its lease and membership.
        heard: list[tuple[int | None, bool]] = []
        renewing, renewed = asyncio.Event(), asyncio.Event()

        async def hear() -> None:
            heard.append((node._lease, node.is_confirmed()))
            renewing.set()
            await renewed.wait()  # as a store restarting its channels in a new epoch

        node = Membership(
            gateway,
            "a",
            "http://a.example:8000",
            prefix="/lost",
            ttl_s=2,
            on_lease_lost=hear,
        )
        try:
            await node.join()
            lease = node._lease
            assert lease is not None
            await gateway.revoke(lease)  # as if etcd had not heard from it for its lease
            await renewing.wait()
            # Still unconfirmed (so fenced), and not back in, until the restart is done.
            assert (node.is_confirmed(), node._lease) == (False, lease)
            renewed.set()
            await until(lambda: node._lease not in (None, lease), "a joins again")
            assert heard == [(lease, False)]  # unconfirmed from the answer on, then told
            assert node.is_confirmed()
            assert (await node.read_ring())[0].nodes == {"a": "http://a.example:8000"}
        finally:
            await node.leave()
            await gateway.aclose()
