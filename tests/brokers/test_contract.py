"""The broker contract: every broker keeps the guarantees of ``brokers.base.Broker``,
and its presence store those of ``brokers.base.PresenceStore``.

One suite, parametrized over every broker. A new broker joins by adding its factory to
``BROKER_FACTORIES`` and passes unmodified. Channel names are unique per test, so a
broker backed by a shared service (Redis, NATS, PostgreSQL) needs no cleanup between
tests; deliveries are awaited, never assumed synchronous with ``publish``. A second
node on the same backend is the factory called again with the same setup (the tests
across nodes skip a single-node store, ``LocalPresence``).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest
from redis.crc import key_slot

from tests.support.clock import FakeClock
from tests.support.handler import Recording, RecordingCommands, RecordingHandler
from tests.support.nats_server import make_nats_broker
from tests.support.postgres import make_postgres_broker, make_pull_postgres_broker
from tests.support.redis_cluster import (
    LocalRedisCluster,
    RedisServer,
    make_redis_broker,
    make_redis_cluster_broker,
    shared_cluster,
    wait_until,
)
from tests.support.relay_origin import make_relay_broker
from tidings.brokers.base import (
    Broker,
    DisconnectUser,
    NodeControl,
    PresenceChange,
    PresenceStore,
)
from tidings.brokers.memory import MemoryBroker, presence_store_of
from tidings.brokers.redis import RedisBroker
from tidings.brokers.redis_scripts import DEFAULT_PREFIX, ChannelKeys
from tidings.brokers.sqlite import DB_FILE_NAME, Durability, SqliteBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.dedupe import DedupeOptions
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.errors import BrokerError

HOUR_MS = 3_600_000
SMALL_HISTORY = 3
BRIEF_TTL_MS = 1_000
DEDUPE_WINDOW_MS = 60_000
CONCURRENT_PUBLISHES = 300

NAMESPACES = Namespaces(
    {
        NamespaceName("room"): NamespaceOptions(history=HistoryOptions(1_000, HOUR_MS)),
        NamespaceName("small"): NamespaceOptions(history=HistoryOptions(SMALL_HISTORY, HOUR_MS)),
        NamespaceName("brief"): NamespaceOptions(history=HistoryOptions(100, BRIEF_TTL_MS)),
    }
)


@dataclass(frozen=True, slots=True)
class BrokerSetup:
    """What a test gives a broker factory."""

    namespaces: Namespaces
    clock: FakeClock
    dedupe: DedupeOptions
    directory: Path


BrokerFactory = Callable[[BrokerSetup], Broker]


def make_memory_broker(setup: BrokerSetup) -> Broker:
    return MemoryBroker(setup.namespaces, clock=setup.clock, dedupe=setup.dedupe)


def make_sqlite_broker(setup: BrokerSetup) -> Broker:
    return SqliteBroker(
        setup.directory / "data", setup.namespaces, clock=setup.clock, dedupe=setup.dedupe
    )


def make_fast_sqlite_broker(setup: BrokerSetup) -> Broker:
    return SqliteBroker(
        setup.directory / "data",
        setup.namespaces,
        clock=setup.clock,
        dedupe=setup.dedupe,
        durability="fast",
    )


BROKER_FACTORIES = [
    pytest.param(make_memory_broker, id="memory"),
    pytest.param(make_sqlite_broker, id="sqlite"),
    pytest.param(make_fast_sqlite_broker, id="sqlite-fast"),
    pytest.param(make_redis_broker, id="redis"),
    pytest.param(make_redis_cluster_broker, id="redis-cluster"),
    pytest.param(make_postgres_broker, id="postgres"),
    pytest.param(make_pull_postgres_broker, id="postgres-pull"),
    pytest.param(make_nats_broker, id="nats"),
    pytest.param(make_relay_broker, id="relay"),
]
# Brokers whose nodes share one backend: what one node does, another hears.
SHARED_BROKER_FACTORIES = [
    pytest.param(make_redis_broker, id="redis"),
    pytest.param(make_redis_cluster_broker, id="redis-cluster"),
    pytest.param(make_postgres_broker, id="postgres"),
    pytest.param(make_pull_postgres_broker, id="postgres-pull"),
    pytest.param(make_nats_broker, id="nats"),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
def presence_changes() -> list[PresenceChange]:
    return []


@pytest.fixture(params=BROKER_FACTORIES)
def broker_factory(request: pytest.FixtureRequest) -> BrokerFactory:
    factory: BrokerFactory = request.param
    return factory


@pytest.fixture
def broker_setup(clock: FakeClock, tmp_path: Path) -> BrokerSetup:
    return BrokerSetup(NAMESPACES, clock, DedupeOptions(DEDUPE_WINDOW_MS), tmp_path)


@pytest.fixture
async def broker(
    broker_factory: BrokerFactory,
    broker_setup: BrokerSetup,
    handler: RecordingHandler,
    presence_changes: list[PresenceChange],
) -> AsyncIterator[Broker]:
    broker = broker_factory(broker_setup)
    # As the hub does: listen to the broker's presence store, then start the broker.
    presence_store_of(broker).listen(presence_changes.append)
    await broker.start(handler)
    try:
        yield broker
    finally:
        await broker.close()


def unique_channel(namespace: str = "room") -> ChannelName:
    """Return a channel no other test uses."""
    return ChannelName(f"{namespace}:{secrets.token_hex(8)}")


def data(n: int) -> bytes:
    return b'{"n":%d}' % n


async def publish_many(broker: Broker, channel: ChannelName, count: int) -> list[Publication]:
    """Publish ``count`` publications one after another; return them as history has them."""
    for n in range(count):
        await broker.publish(channel, data(n))
    read = await broker.history(channel)
    assert isinstance(read.recovery, Replay)
    return list(read.recovery.publications)


# Offsets and order


async def test_publish_assigns_gap_free_offsets_from_one(broker: Broker) -> None:
    channel = unique_channel()

    results = [await broker.publish(channel, data(n)) for n in range(5)]

    assert [r.position.offset for r in results] == [1, 2, 3, 4, 5]
    assert len({r.position.epoch for r in results}) == 1
    assert not any(r.duplicate for r in results)


async def test_channels_are_sequenced_independently(broker: Broker) -> None:
    first, second = unique_channel(), unique_channel()

    await broker.publish(first, data(1))
    await broker.publish(first, data(2))
    result = await broker.publish(second, data(3))

    assert result.position.offset == 1


async def test_concurrent_publishers_yield_one_gap_free_order(broker: Broker) -> None:
    channel = unique_channel()

    results = await asyncio.gather(
        *(broker.publish(channel, data(n)) for n in range(CONCURRENT_PUBLISHES))
    )

    offsets = sorted(r.position.offset for r in results)
    assert offsets == list(range(1, CONCURRENT_PUBLISHES + 1))
    read = await broker.history(channel)
    assert isinstance(read.recovery, Replay)
    stored = {p.offset: p.data for p in read.recovery.publications}
    assert stored == {r.position.offset: data(n) for n, r in enumerate(results)}
    assert read.head == Position(results[0].position.epoch, CONCURRENT_PUBLISHES)


async def test_publication_keeps_data_ts_key_and_info(
    broker: Broker, clock: FakeClock, handler: RecordingHandler
) -> None:
    channel = unique_channel()
    info = ClientInfo("c-1", "alice")
    await broker.subscribe(channel)

    result = await broker.publish(channel, b'{"text":"hi"}', key="k-1", info=info)

    expected = Publication(
        channel, result.position.epoch, 1, b'{"text":"hi"}', clock.now_ms(), "k-1", info
    )
    assert await handler.wait_for(1) == [expected]
    read = await broker.history(channel)
    assert read.recovery == Replay((expected,))


# Delivery to subscribed nodes


async def test_subscribed_node_receives_each_publication_once_in_offset_order(
    broker: Broker, handler: RecordingHandler
) -> None:
    channel = unique_channel()
    await broker.subscribe(channel)

    results = await asyncio.gather(
        *(broker.publish(channel, data(n)) for n in range(CONCURRENT_PUBLISHES))
    )

    delivered = await handler.wait_for(CONCURRENT_PUBLISHES)
    assert [p.offset for p in delivered] == list(range(1, CONCURRENT_PUBLISHES + 1))
    assert {p.offset: p.data for p in delivered} == {
        r.position.offset: data(n) for n, r in enumerate(results)
    }


async def test_unsubscribed_channel_delivers_nothing(
    broker: Broker, handler: RecordingHandler
) -> None:
    channel = unique_channel()
    await broker.publish(channel, data(1))

    # Per-channel order: had the first been delivered, it would come before this one.
    await broker.subscribe(channel)
    await broker.publish(channel, data(2))

    delivered = await handler.wait_for(1)
    assert [p.offset for p in delivered] == [2]
    assert len(handler.publications) == 1


async def test_unsubscribe_stops_delivery(broker: Broker, handler: RecordingHandler) -> None:
    channel = unique_channel()
    await broker.subscribe(channel)
    await broker.publish(channel, data(1))
    await handler.wait_for(1)

    await broker.unsubscribe(channel)
    await broker.publish(channel, data(2))
    await broker.subscribe(channel)
    await broker.publish(channel, data(3))

    delivered = await handler.wait_for(2)
    assert [p.offset for p in delivered] == [1, 3]
    assert len(handler.publications) == 2


async def test_subscribe_and_unsubscribe_are_idempotent(
    broker: Broker, handler: RecordingHandler
) -> None:
    channel = unique_channel()
    await broker.subscribe(channel)
    await broker.subscribe(channel)
    await broker.publish(channel, data(1))
    await broker.unsubscribe(channel)
    await broker.unsubscribe(channel)
    await broker.publish(channel, data(2))
    await broker.subscribe(channel)
    await broker.publish(channel, data(3))

    delivered = await handler.wait_for(2)
    assert [p.offset for p in delivered] == [1, 3]
    assert len(handler.publications) == 2


# Idempotent publish


async def test_repeated_key_returns_original_position_without_delivery(
    broker: Broker, handler: RecordingHandler
) -> None:
    channel = unique_channel()
    await broker.subscribe(channel)
    original = await broker.publish(channel, data(1), key="order-7")

    repeated = await broker.publish(channel, data(2), key="order-7")
    await broker.publish(channel, data(3))

    assert repeated.position == original.position
    assert repeated.duplicate
    assert not original.duplicate
    delivered = await handler.wait_for(2)
    assert [(p.offset, p.data) for p in delivered] == [(1, data(1)), (2, data(3))]
    assert len(handler.publications) == 2


async def test_concurrent_publishes_of_one_key_make_one_publication(broker: Broker) -> None:
    channel = unique_channel()

    results = await asyncio.gather(*(broker.publish(channel, data(n), key="k") for n in range(10)))

    assert {r.position for r in results} == {results[0].position}
    assert sum(not r.duplicate for r in results) == 1
    read = await broker.history(channel)
    assert read.head.offset == 1


@pytest.mark.parametrize("broker_factory", SHARED_BROKER_FACTORIES, indirect=True)
async def test_a_key_published_on_two_nodes_at_once_is_published_once(
    broker: Broker, another_node: Broker
) -> None:
    channel = unique_channel()
    await another_node.start(RecordingHandler())
    try:
        results = await asyncio.gather(
            *(
                node.publish(channel, data(n), key="once")
                for n in range(5)
                for node in (broker, another_node)
            )
        )
        read = await broker.history(channel)
    finally:
        await another_node.close()

    assert {r.position for r in results} == {read.head}
    assert sum(not r.duplicate for r in results) == 1
    assert read.head.offset == 1


async def test_keys_are_per_channel(broker: Broker) -> None:
    first, second = unique_channel(), unique_channel()
    await broker.publish(first, data(1), key="k")

    result = await broker.publish(second, data(2), key="k")

    assert not result.duplicate
    assert result.position.offset == 1


async def test_key_is_published_again_after_the_dedupe_window(
    broker: Broker, clock: FakeClock
) -> None:
    channel = unique_channel()
    await broker.publish(channel, data(1), key="k")
    clock.advance(DEDUPE_WINDOW_MS + 1)

    result = await broker.publish(channel, data(2), key="k")

    assert not result.duplicate
    assert result.position.offset == 2


# History and recovery


async def test_history_since_every_position_replays_exactly_the_later_ones(
    broker: Broker,
) -> None:
    channel = unique_channel()
    publications = await publish_many(broker, channel, 8)
    epoch = publications[0].epoch

    for offset in range(len(publications) + 1):
        read = await broker.history(channel, Position(epoch, offset))

        assert read.head == Position(epoch, 8)
        assert read.recovery == Replay(tuple(publications[offset:]))


async def test_history_since_with_limit_replays_the_first_later_ones(broker: Broker) -> None:
    channel = unique_channel()
    publications = await publish_many(broker, channel, 8)

    read = await broker.history(channel, Position(publications[0].epoch, 2), limit=3)

    assert read.recovery == Replay(tuple(publications[2:5]))


async def test_history_at_head_replays_nothing(broker: Broker) -> None:
    channel = unique_channel()
    result = await broker.publish(channel, data(1))

    read = await broker.history(channel, result.position)

    assert read.head == result.position
    assert read.recovery == Replay(())


async def test_history_reports_gap_when_position_ahead_of_head(broker: Broker) -> None:
    channel = unique_channel()
    result = await broker.publish(channel, data(1))

    read = await broker.history(channel, Position(result.position.epoch, 2))

    assert read.recovery == Gap(GapReason.AHEAD_OF_HEAD)


async def test_history_reports_gap_when_position_of_another_epoch(broker: Broker) -> None:
    channel = unique_channel()
    result = await broker.publish(channel, data(1))
    other_epoch = "x" + result.position.epoch[1:] if result.position.epoch[0] != "x" else "y"

    read = await broker.history(channel, Position(other_epoch, 0))

    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)


async def test_history_reports_gap_when_offset_evicted_by_size(broker: Broker) -> None:
    channel = unique_channel("small")
    for n in range(SMALL_HISTORY + 2):
        await broker.publish(channel, data(n))
    epoch = (await broker.history(channel)).head.epoch

    evicted = [await broker.history(channel, Position(epoch, n)) for n in (0, 1)]
    kept = await broker.history(channel, Position(epoch, 2))

    assert [r.recovery for r in evicted] == [Gap(GapReason.EVICTED)] * 2
    assert isinstance(kept.recovery, Replay)
    assert [p.offset for p in kept.recovery.publications] == [3, 4, 5]


async def test_history_without_since_gives_latest_retained(broker: Broker) -> None:
    channel = unique_channel()
    publications = await publish_many(broker, channel, 5)

    latest_two = await broker.history(channel, limit=2)
    none = await broker.history(channel, limit=0)

    assert len(publications) == 5
    assert latest_two.recovery == Replay(tuple(publications[3:]))
    assert none.recovery == Replay(())
    assert latest_two.head == publications[-1].position


async def test_history_without_since_is_bounded_by_history_size(broker: Broker) -> None:
    channel = unique_channel("small")

    publications = await publish_many(broker, channel, SMALL_HISTORY + 4)

    assert [p.offset for p in publications] == [5, 6, 7]


async def test_history_reports_gap_when_offset_expired_by_ttl(
    broker: Broker, clock: FakeClock
) -> None:
    channel = unique_channel("brief")
    await broker.publish(channel, data(1))
    await broker.publish(channel, data(2))
    clock.advance(BRIEF_TTL_MS * 3 // 5)
    third = await broker.publish(channel, data(3))
    clock.advance(BRIEF_TTL_MS * 3 // 5)
    epoch = third.position.epoch

    expired = await broker.history(channel, Position(epoch, 0))
    kept = await broker.history(channel, Position(epoch, 2))
    latest = await broker.history(channel)

    assert expired.recovery == Gap(GapReason.EVICTED)
    assert isinstance(kept.recovery, Replay)
    assert [p.offset for p in kept.recovery.publications] == [3]
    assert isinstance(latest.recovery, Replay)
    assert [p.offset for p in latest.recovery.publications] == [3]
    assert latest.head == third.position


async def test_history_of_unknown_channel_is_empty_at_offset_zero(broker: Broker) -> None:
    channel = unique_channel()

    first = await broker.history(channel)
    again = await broker.history(channel, Position(first.head.epoch, 0))
    ahead = await broker.history(channel, Position(first.head.epoch, 1))

    assert first.head.offset == 0
    assert first.recovery == Replay(())
    assert again.head == first.head
    assert again.recovery == Replay(())
    assert ahead.recovery == Gap(GapReason.AHEAD_OF_HEAD)


async def test_position_read_before_first_publish_recovers_it(broker: Broker) -> None:
    channel = unique_channel()
    before = await broker.history(channel)

    result = await broker.publish(channel, data(1))
    read = await broker.history(channel, before.head)

    # Reading created nothing, and the channel's epoch is the one the reader was given.
    assert result.position == Position(before.head.epoch, 1)
    assert isinstance(read.recovery, Replay)
    assert [p.offset for p in read.recovery.publications] == [1]


async def test_is_ready_while_started(broker: Broker) -> None:
    assert await broker.is_ready()


# Presence: the ``PresenceStore`` of each broker (``brokers.base.PresenceStore``)


@pytest.fixture
def presence(broker: Broker) -> PresenceStore:
    return presence_store_of(broker)


async def test_the_presence_store_is_the_brokers_own_and_the_same_on_every_call(
    broker: Broker, presence: PresenceStore
) -> None:
    assert isinstance(presence, PresenceStore)
    assert presence_store_of(broker) is presence


async def test_presence_of_a_channel_nobody_joined_is_empty(presence: PresenceStore) -> None:
    assert await presence.presence(unique_channel()) == {}


async def test_presence_lists_joined_clients_until_they_leave(presence: PresenceStore) -> None:
    channel, other = unique_channel(), unique_channel()

    await presence.join(channel, "n1.1", "alice")
    await presence.join(channel, "n1.2", "")
    await presence.join(other, "n1.3", "carol")
    both = await presence.presence(channel)
    await presence.leave(channel, "n1.1")
    await presence.leave(channel, "n1.1")  # idempotent
    one = await presence.presence(channel)
    await presence.leave(channel, "n1.2")

    assert both == {"n1.1": "alice", "n1.2": ""}
    assert one == {"n1.2": ""}
    assert await presence.presence(channel) == {}
    assert await presence.presence(other) == {"n1.3": "carol"}


async def test_a_join_again_lists_the_client_once_with_its_last_user(
    presence: PresenceStore,
) -> None:
    channel = unique_channel()

    await presence.join(channel, "n1.1", "alice")
    await presence.join(channel, "n1.1", "alicia")

    assert await presence.presence(channel) == {"n1.1": "alicia"}


async def test_a_node_is_not_handed_back_its_own_presence_changes(
    broker: Broker,
    presence: PresenceStore,
    handler: RecordingHandler,
    presence_changes: list[PresenceChange],
) -> None:
    channel = unique_channel()
    await broker.subscribe(channel)

    await presence.join(channel, "n1.1", "alice")
    await presence.leave(channel, "n1.1")
    await broker.publish(channel, data(1))
    await handler.wait_for(1)  # a change carried with publications would be here by now

    assert presence_changes == []


@pytest.fixture
def another_node(broker_factory: BrokerFactory, broker_setup: BrokerSetup) -> Broker:
    """A second node on the broker's backend, not started: its factory called again."""
    return broker_factory(broker_setup)


@pytest.mark.parametrize("broker_factory", SHARED_BROKER_FACTORIES, indirect=True)
async def test_presence_changes_reach_another_node_once_in_order_and_its_reads_are_fresh(
    broker: Broker,
    another_node: Broker,
    presence: PresenceStore,
    handler: RecordingHandler,
    presence_changes: list[PresenceChange],
) -> None:
    channel = unique_channel()
    other, other_handler = another_node, RecordingHandler()
    heard: Recording[PresenceChange] = Recording()
    presence_store_of(other).listen(heard)
    await other.start(other_handler)
    try:
        await other.subscribe(channel)
        await broker.subscribe(channel)  # where its own changes would come back, if any
        await presence.join(channel, "n1.1", "alice")
        while_joined = await presence_store_of(other).presence(channel)
        await presence.leave(channel, "n1.1")
        after_leaving = await presence_store_of(other).presence(channel)
        changes = await heard.wait_for(2)
        await broker.publish(channel, data(1))  # own changes would have come by now
        await handler.wait_for(1)
        await other_handler.wait_for(1)  # after the changes, on the same path
    finally:
        await other.close()

    assert while_joined == {"n1.1": "alice"}
    assert after_leaving == {}
    assert changes == [
        PresenceChange("join", channel, "n1.1", "alice"),
        PresenceChange("leave", channel, "n1.1", "alice"),
    ]
    assert heard.items == changes  # each once
    assert presence_changes == []  # and never to the node that made it
    assert [p.offset for p in other_handler.publications] == [1]  # changes are none


# A store that comes back older
#
# Each broker's store can come back older than it was: the memory broker restarts with
# nothing, a sqlite file loses its unsynced WAL in a power loss, a Redis restarts from an
# RDB saved a moment earlier. Whatever it lost, no position it gave out may be given
# again for other data: either the channel moves to a new epoch (a reader resuming is
# told ``Gap``) or publishing is refused until positions are verified. Each broker joins
# with its own way of making its store come back older (``StoreRollback``).


class StoreRollback(Protocol):
    """How a broker's store is made to come back older than it was."""

    def make(self, setup: BrokerSetup) -> Broker:
        """Return a broker (not started) on a store of this test's own."""
        ...

    async def snapshot(self, broker: Broker) -> None:
        """Fix the state the store will come back to."""
        ...

    async def come_back_older(self, broker: Broker, setup: BrokerSetup) -> Broker:
        """Lose what followed the snapshot; return the broker to go on with, started."""
        ...


class MemoryRollback:
    """The process restarts: everything is lost."""

    def make(self, setup: BrokerSetup) -> Broker:
        return make_memory_broker(setup)

    async def snapshot(self, broker: Broker) -> None:
        return None

    async def come_back_older(self, broker: Broker, setup: BrokerSetup) -> Broker:
        await broker.close()
        restarted = self.make(setup)
        await restarted.start(RecordingHandler())
        return restarted


@dataclass
class SqliteRollback:
    """A power loss: the node dies, and what was not fsynced is gone (the WAL since the
    last checkpoint under ``fast``; nothing under ``full``, which fsyncs every commit)."""

    durability: Durability

    def make(self, setup: BrokerSetup) -> Broker:
        return SqliteBroker(
            setup.directory / "data",
            setup.namespaces,
            clock=setup.clock,
            dedupe=setup.dedupe,
            durability=self.durability,
        )

    async def snapshot(self, broker: Broker) -> None:
        await asyncio.to_thread(self._checkpoint, broker)

    def _checkpoint(self, broker: Broker) -> None:
        assert isinstance(broker, SqliteBroker)
        with contextlib.closing(sqlite3.connect(broker.file)) as db:
            db.execute("PRAGMA wal_checkpoint(FULL)")

    async def come_back_older(self, broker: Broker, setup: BrokerSetup) -> Broker:
        assert isinstance(broker, SqliteBroker)
        survivor = setup.directory / "survivor"
        survivor.mkdir()
        kept = [""] if self.durability == "fast" else ["", "-wal"]
        for suffix in kept:  # copied while the node still runs: as it was when it died
            shutil.copyfile(f"{broker.file}{suffix}", survivor / f"{DB_FILE_NAME}{suffix}")
        await broker.close()
        restarted = SqliteBroker(
            survivor,
            setup.namespaces,
            clock=setup.clock,
            dedupe=setup.dedupe,
            durability=self.durability,
        )
        await restarted.start(RecordingHandler())
        return restarted


@dataclass
class RedisRollback:
    """Redis restarts from an RDB saved a moment earlier; the node stays up."""

    directory: Path
    server: RedisServer | None = None

    def make(self, setup: BrokerSetup) -> Broker:
        self.server = RedisServer(self.directory / "redis").start()
        return RedisBroker(
            self.server.url, setup.namespaces, clock=setup.clock, dedupe=setup.dedupe
        )

    async def snapshot(self, broker: Broker) -> None:
        assert self.server is not None
        await asyncio.to_thread(self.server.cli, "SAVE")

    async def come_back_older(self, broker: Broker, setup: BrokerSetup) -> Broker:
        assert self.server is not None
        await asyncio.to_thread(self.server.stop)
        await asyncio.to_thread(self.server.start)
        return broker

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


@dataclass
class RedisClusterRollback:
    """The master holding the channel restarts from an RDB saved a moment earlier."""

    channel: ChannelName
    cluster: LocalRedisCluster | None = None

    def make(self, setup: BrokerSetup) -> Broker:
        self.cluster = shared_cluster()
        return make_redis_cluster_broker(setup)

    def _owner(self) -> RedisServer:
        assert self.cluster is not None
        slot = key_slot(ChannelKeys.of(DEFAULT_PREFIX, self.channel).head.encode())
        port = self.cluster.owner_of(slot)
        return next(s for s in self.cluster.servers if s.port == port)

    async def snapshot(self, broker: Broker) -> None:
        await asyncio.to_thread(self._owner().cli, "SAVE")

    async def come_back_older(self, broker: Broker, setup: BrokerSetup) -> Broker:
        cluster, owner = self.cluster, self._owner()
        assert cluster is not None
        await asyncio.to_thread(owner.stop)
        await asyncio.to_thread(owner.start)
        await asyncio.to_thread(wait_until, "the cluster is ok again", cluster.is_ok)
        return broker

    def stop(self) -> None:
        return None


ROLLBACKS = ["memory", "sqlite", "sqlite-fast", "redis", "redis-cluster"]


async def _publish_when_back(broker: Broker, channel: ChannelName, n: int) -> Position:
    async with asyncio.timeout(30):
        while True:
            try:
                return (await broker.publish(channel, data(n))).position
            except BrokerError:  # the store is still coming back: refused, not made
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", ROLLBACKS)
async def test_a_store_back_older_never_gives_a_position_again_for_other_data(
    kind: str, clock: FakeClock, tmp_path: Path
) -> None:
    channel = unique_channel()
    rollback: StoreRollback
    if kind == "memory":
        rollback = MemoryRollback()
    elif kind in ("sqlite", "sqlite-fast"):
        rollback = SqliteRollback("fast" if kind == "sqlite-fast" else "full")
    elif kind == "redis":
        rollback = RedisRollback(tmp_path)
    else:
        rollback = RedisClusterRollback(channel)
    setup = BrokerSetup(NAMESPACES, clock, DedupeOptions(DEDUPE_WINDOW_MS), tmp_path)
    broker = rollback.make(setup)
    await broker.start(RecordingHandler())
    given: dict[Position, bytes] = {}
    try:
        for n in range(3):
            given[(await broker.publish(channel, data(n))).position] = data(n)
        await rollback.snapshot(broker)
        for n in range(3, 6):
            given[(await broker.publish(channel, data(n))).position] = data(n)
        broker = await rollback.come_back_older(broker, setup)

        after = {await _publish_when_back(broker, channel, n): data(n) for n in range(6, 9)}
        reads = [await broker.history(channel, position) for position in list(given)]
    finally:
        await broker.close()
        if isinstance(rollback, RedisRollback | RedisClusterRollback):
            rollback.stop()

    reissued = [p for p, d in after.items() if given.get(p, d) != d]
    assert reissued == []
    for read in reads:
        # A reader resuming from any earlier position is either told of the gap or given
        # exactly what was published after it: never other data at a position it knew.
        if isinstance(read.recovery, Replay):
            replayed = {p.position: p.data for p in read.recovery.publications}
            assert all(given.get(p, d) == d for p, d in replayed.items())
            assert all(after.get(p, d) == d for p, d in replayed.items())


# Node commands (``NodeControl``): every broker carries them; the one-node brokers alone.


async def test_a_node_command_is_handled_on_the_sending_node(broker: Broker) -> None:
    assert isinstance(broker, NodeControl)
    commands = RecordingCommands()
    broker.listen(commands)
    command = DisconnectUser("alice", 4003, "banned")

    nodes = await broker.send_to_nodes(command)

    assert commands.commands == [command]  # handled here before the call returned
    if isinstance(broker, RedisBroker):
        assert nodes >= 1  # the shared Redis may hold other tests' nodes
    else:
        assert nodes == 1  # one process: this node is every node


async def test_a_failing_node_command_handler_does_not_fail_the_sender(broker: Broker) -> None:
    assert isinstance(broker, NodeControl)
    handled: list[DisconnectUser] = []

    def failing(command: DisconnectUser) -> None:
        handled.append(command)
        raise RuntimeError("a faulty handler")

    broker.listen(failing)
    command = DisconnectUser("bob", 4500, "come back")

    assert await broker.send_to_nodes(command) >= 1
    assert handled == [command]
