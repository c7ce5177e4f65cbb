"""A ring node's stale channels start in a new epoch (server/ring_node.py), for each
store that can (``RenewingStore``: memory, sqlite), against a real etcd of the test's
own: after etcd let the node's lease expire, and when a ring gives it back channels
another node sequenced meanwhile (no hand-over: no ``cluster_secret``), a client
resuming from a position of the old epoch hears ``recovered: false``, and the next
publication starts the new epoch at offset 1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final

import pytest

from tests.support.etcd import etcd_cluster
from tests.support.recording import RecordingSubscriber
from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.membership import Membership
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.placement import Here
from tidings.core.publication import Position
from tidings.core.ring import HashRing
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.server.forwarding import OwnerLink
from tidings.server.key_ownership import KeyOwnership
from tidings.server.ring_moves import RingMover
from tidings.server.ring_node import NodeRing
from tidings.server.routing import placement_of
from tidings.server.settings import Settings

PREFIX: Final = "/epochs"
CONDITION_TIMEOUT_S: Final = 20.0
STORES: Final = ("memory", "sqlite")


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (the ring and the lease have no event here) until it holds."""
    try:
        async with asyncio.timeout(CONDITION_TIMEOUT_S):
            while not condition():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out: {what}")


def no_link() -> OwnerLink:
    raise AssertionError("a node without a cluster secret links to no other owner")


@contextlib.asynccontextmanager
async def node_b(
    etcd: str, store_kind: str, directory: Path
) -> AsyncIterator[tuple[NodeRing, Hub]]:
    """Node ``b`` of the ring in ``etcd``, storing in ``store_kind``, joined, with its hub
    fenced as the app's is."""
    settings = Settings(node_id="b", ring_etcd=etcd, ring_prefix=PREFIX, ring_ttl_s=2.0)
    placement = placement_of(settings)
    store: Broker = (
        MemoryBroker(Namespaces())
        if store_kind == "memory"
        else SqliteBroker(directory, Namespaces())
    )
    mover = RingMover(SessionRegistry(10), placement, Namespaces(), 100.0)
    ring = NodeRing(
        settings, placement, store, no_link, mover=mover, keys=KeyOwnership(placement, Namespaces())
    )
    assert ring.member is not None
    hub = Hub(ring.broker, fence=ring.fence())
    await hub.start()
    try:
        await ring.member.join()
        yield ring, hub
    finally:
        await ring.member.close()
        await hub.close()


async def resume(hub: Hub, channel: ChannelName, since: Position) -> tuple[Position, bool]:
    resumed = await hub.subscribe(channel, RecordingSubscriber("c"), since)
    assert resumed is not None
    return resumed.position, resumed.recovered


@pytest.mark.parametrize("store_kind", STORES)
async def test_a_node_whose_lease_expired_starts_its_channels_in_a_new_epoch(
    tmp_path: Path, store_kind: str
) -> None:
    channel = ChannelName("room:1")
    with etcd_cluster(tmp_path, 1) as cluster:
        gateway = EtcdGateway(cluster.urls)
        try:
            async with node_b(cluster.urls, store_kind, tmp_path / "data") as (ring, hub):
                member = ring.member
                assert member is not None
                membership: Membership = member._membership
                for n in range(2):
                    old = (await hub.publish(channel, b"%d" % n)).position
                lease = membership._lease
                assert lease is not None
                await gateway.revoke(lease)  # as if etcd had not heard from b for its lease
                await until(
                    lambda: membership._lease not in (None, lease) and member.is_confirmed(),
                    "b joins again with a new lease",
                )
                position, recovered = await resume(hub, channel, old)
                published = (await hub.publish(channel, b"after")).position
        finally:
            await gateway.aclose()
    assert recovered is False
    assert position.epoch != old.epoch
    assert published == Position(position.epoch, 1)


@pytest.mark.parametrize("store_kind", STORES)
async def test_channels_a_ring_gives_back_without_a_hand_over_start_in_a_new_epoch(
    tmp_path: Path, store_kind: str
) -> None:
    # b sequences every channel alone, a joins and takes some, then leaves: b gets them
    # back, and what it held of them is from before a sequenced them.
    with etcd_cluster(tmp_path, 1) as cluster:
        gateway = EtcdGateway(cluster.urls)
        a = Membership(gateway, "a", "http://a.example:8000", prefix=PREFIX, ttl_s=2)
        stays = ChannelName("room:stays")
        try:
            async with node_b(cluster.urls, store_kind, tmp_path / "data") as (ring, hub):
                ring_of_two = HashRing({"a": "", "b": ""})
                names = (ChannelName(f"room:{n}") for n in range(1000))
                moving = next(name for name in names if ring_of_two.owner(name) == "a")
                stays = next(name for name in names if ring_of_two.owner(name) == "b")
                old = (await hub.publish(moving, b"b's")).position
                kept = (await hub.publish(stays, b"b's")).position
                placement = ring._placement
                await a.join()
                await until(lambda: not isinstance(placement.place(moving), Here), "a owns it")
                await a.leave()
                await until(lambda: isinstance(placement.place(moving), Here), "b owns it again")
                position, recovered = await resume(hub, moving, old)
                published = (await hub.publish(moving, b"b's again")).position
                kept_position, kept_recovered = await resume(hub, stays, kept)
        finally:
            await a.leave()
            await gateway.aclose()
    assert recovered is False
    assert position.epoch != old.epoch
    assert published == Position(position.epoch, 1)
    assert (kept_position, kept_recovered) == (kept, True)  # b sequenced it all along
