"""What the Redis broker adds to the contract: many nodes on one Redis, one Redis message
per publication per node, batched subscribes, reconnection with gap filling, and new
epochs when Redis loses (or rolls back) a channel.

Tests that stop, flush or reconfigure Redis run against a dedicated ``redis-server``
each (on a free port, no persistence), never against the shared one. Waiting for the
broker to notice an outage is a bounded poll of ``is_ready``; deliveries are awaited.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from tests.support.clock import FakeClock
from tests.support.handler import RecordingCommands, RecordingHandler
from tests.support.redis_cluster import (
    SHARED_REDIS_URL,
    LocalRedisCluster,
    RedisServer,
    redis_cli,
    redis_cluster,  # noqa: F401  (a fixture used here)
    start_cluster,
)
from tests.support.services import REDIS_HOST, REDIS_PORT, require_service
from tests.support.shared_broker import (
    HOUR_MS,
    NAMESPACES,
    POLL_LIMIT_S,
    SMALL_HISTORY,
    data,
    eventually,
    is_not,
    offsets,
    stopped_after,
    unique_channel,
)
from tidings.brokers.base import DisconnectUser, PresenceChange
from tidings.brokers.factory import create_broker
from tidings.brokers.redis import RedisBroker, RedisTarget
from tidings.brokers.redis_presence import PRESENCE_REFRESH_S, presence_key_of
from tidings.brokers.redis_scripts import ChannelKeys, topic_of
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.core.wire import EncodedPublication
from tidings.errors import BrokerError, ConfigError
from tidings.hub.hub import Hub
from tidings.hub.registry import PresenceEvent

LIFETIME_S: Final = 30.0
LIFETIME_MS: Final = 30_000
NODE_USER: Final = "node-a"
NODE_PASSWORD: Final = "node-a-secret"


@asynccontextmanager
async def running(url: str, handler: RecordingHandler | None = None) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(url, NAMESPACES, reconnect_max_delay_s=0.2)
    await broker.start(handler or RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


@asynccontextmanager
async def redis_client(url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(RedisTarget.parse(url).url)  # without the broker's own options
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def shared_url() -> str:
    require_service(REDIS_HOST, REDIS_PORT, "Redis")
    return SHARED_REDIS_URL


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own."""
    with stopped_after(RedisServer(tmp_path / "redis").start()) as server:
        yield server


@dataclass(frozen=True)
class Deployment:
    """Redis servers where node A connects as a user the test may lock out."""

    scheme: str
    ports: list[int]

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.ports[0]}"

    @property
    def node_a_url(self) -> str:
        return f"{self.scheme}://{NODE_USER}:{NODE_PASSWORD}@127.0.0.1:{self.ports[0]}"

    def acl(self, *rules: str) -> None:
        for port in self.ports:
            redis_cli(port, "ACL", "SETUSER", NODE_USER, *rules)

    async def lose_node_a(self, broker: RedisBroker) -> None:
        """Lock node A out and cut its connections: it cannot come back before
        ``let_node_a_back``, so publications made meanwhile reach it only from history."""
        self.acl("off")
        for port in self.ports:
            redis_cli(port, "CLIENT", "KILL", "USER", NODE_USER)
        await eventually(lambda: is_not(broker.is_ready()), "the broker noticed the loss")

    def let_node_a_back(self) -> None:
        self.acl("on")


@pytest.fixture(params=["redis", "redis-cluster"])
def deployment(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Deployment]:
    """A dedicated redis-server, or the session's cluster, with node A's user."""
    if request.param == "redis":
        server = RedisServer(tmp_path / "redis").start()
        found = Deployment("redis", [server.port])
    else:
        cluster = request.getfixturevalue("redis_cluster")
        found = Deployment("redis-cluster", cluster.ports)
        server = None
    found.acl("reset", "on", f">{NODE_PASSWORD}", "~*", "&*", "+@all")
    try:
        yield found
    finally:
        found.acl("on")
        if server is not None:
            server.stop()


async def command_calls(client: Redis, command: str) -> int:
    stats: dict[str, Any] = await client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return 0 if entry is None else int(entry["calls"])


# Many nodes on one Redis


@pytest.mark.parametrize("deployment", ["redis", "redis-cluster"])
async def test_two_nodes_publishing_concurrently_see_one_gap_free_order(
    deployment: str, request: pytest.FixtureRequest
) -> None:
    if deployment == "redis":
        url = request.getfixturevalue("shared_url")
    else:
        url = request.getfixturevalue("redis_cluster").url
    channel = unique_channel()
    first, second = RecordingHandler(), RecordingHandler()
    async with running(url, first) as node_1, running(url, second) as node_2:
        await node_1.subscribe(channel)
        await node_2.subscribe(channel)

        results = await asyncio.gather(
            *(node.publish(channel, data(n)) for n in range(100) for node in (node_1, node_2))
        )

        seen_1 = await first.wait_for(200)
        seen_2 = await second.wait_for(200)
    assert sorted(r.position.offset for r in results) == list(range(1, 201))
    assert offsets(seen_1) == list(range(1, 201))
    assert seen_1 == seen_2
    assert len(first.publications) == len(second.publications) == 200


async def test_databases_do_not_hear_each_other(shared_url: str) -> None:
    channel = unique_channel()
    other_db = shared_url.replace("/0?", "/1?")
    heard = RecordingHandler()
    async with running(shared_url, heard) as node_db0, running(other_db) as node_db1:
        await node_db0.subscribe(channel)

        await node_db1.publish(channel, data(1))
        await node_db0.publish(channel, data(2))

        [publication] = await heard.wait_for(1)
    assert publication.data == data(2)
    assert len(heard.publications) == 1


class CountingSubscriber:
    """A local subscriber of a hub that signals once it holds ``expected`` publications."""

    def __init__(self, client_id: str, expected: int) -> None:
        self.client_id = client_id
        self.user = ""
        self.clients = 1
        self.is_relay = False
        self.offsets: list[int] = []
        self._expected = expected
        self.complete = asyncio.Event()

    def deliver(self, publication: EncodedPublication) -> None:
        self.offsets.append(publication.publication.offset)
        if len(self.offsets) >= self._expected:
            self.complete.set()

    def deliver_presence(self, event: PresenceEvent) -> None:
        pass

    def report_gap(self, channel: ChannelName) -> None:
        raise AssertionError(f"no gap is expected on {channel}")


async def test_one_redis_publish_and_one_subscription_per_node_whatever_the_subscribers(
    dedicated: RedisServer,
) -> None:
    channel, publications, per_node = unique_channel(), 20, 150
    topic = topic_of("tidings", 0, channel)
    async with (
        running(dedicated.url) as broker_1,
        running(dedicated.url) as broker_2,
        redis_client(dedicated.url) as admin,
    ):
        hubs = [Hub(broker_1), Hub(broker_2)]
        subscribers = []
        for node, hub in enumerate(hubs):
            await hub.start()
            for n in range(per_node):
                subscriber = CountingSubscriber(f"{node}-{n}", publications)
                subscribers.append(subscriber)
                await hub.subscribe(channel, subscriber)
        await admin.config_resetstat()

        for n in range(publications):
            await hubs[n % 2].publish(channel, data(n))
        await asyncio.gather(*(s.complete.wait() for s in subscribers))

        [(_, subscriptions)] = await admin.pubsub_numsub(topic)
        assert await command_calls(admin, "publish") == publications
        assert await command_calls(admin, "evalsha") == publications
    assert subscriptions == 2  # one per node, not one per local subscriber
    assert all(s.offsets == list(range(1, publications + 1)) for s in subscribers)


async def test_thousands_of_subscribes_arriving_together_make_one_command(
    dedicated: RedisServer,
) -> None:
    channels = [unique_channel() for _ in range(3_000)]
    handler = RecordingHandler()
    async with running(dedicated.url, handler) as broker, redis_client(dedicated.url) as admin:
        await admin.config_resetstat()

        await asyncio.gather(*(broker.subscribe(channel) for channel in channels))
        subscribes = await command_calls(admin, "subscribe")
        await broker.publish(channels[-1], data(1))
        [publication] = await handler.wait_for(1)

        await asyncio.gather(*(broker.unsubscribe(channel) for channel in channels))
        unsubscribes = await command_calls(admin, "unsubscribe")
        [(_, remaining)] = await admin.pubsub_numsub(topic_of("tidings", 0, channels[-1]))
    assert subscribes == 1
    assert unsubscribes == 1
    assert publication.channel == channels[-1]
    assert remaining == 0


# Connection loss and recovery


async def test_lost_connection_is_restored_and_the_gap_filled_in_order(
    deployment: Deployment,
) -> None:
    channel, quiet_channel = unique_channel(), unique_channel()
    away = RecordingHandler()
    async with (
        running(deployment.node_a_url, away) as node_a,
        running(deployment.url) as node_b,
    ):
        await node_a.subscribe(channel)
        await node_a.subscribe(quiet_channel)
        for n in range(3):
            await node_b.publish(channel, data(n))
        await away.wait_for(3)

        await deployment.lose_node_a(node_a)
        for n in range(3, 10):
            await node_b.publish(channel, data(n))
        with pytest.raises(BrokerError):
            await node_a.subscribe(unique_channel())
        deployment.let_node_a_back()
        await eventually(node_a.is_ready, "the broker reconnected")
        await node_b.publish(channel, data(10))
        await node_b.publish(quiet_channel, data(0))

        seen = await away.wait_for(12)
    by_channel = [p.offset for p in seen if p.channel == channel]
    assert by_channel == list(range(1, 12))
    assert [p.data for p in seen if p.channel == channel] == [data(n) for n in range(11)]
    assert [p.offset for p in seen if p.channel == quiet_channel] == [1]
    assert len(away.publications) == 12


async def test_gap_longer_than_history_resumes_from_the_oldest_retained(
    deployment: Deployment,
) -> None:
    channel = unique_channel("small")
    away = RecordingHandler()
    async with (
        running(deployment.node_a_url, away) as node_a,
        running(deployment.url) as node_b,
    ):
        await node_a.subscribe(channel)
        await node_b.publish(channel, data(1))
        await away.wait_for(1)

        await deployment.lose_node_a(node_a)
        for n in range(2, 11):
            await node_b.publish(channel, data(n))
        deployment.let_node_a_back()

        seen = await away.wait_for(1 + SMALL_HISTORY)
    assert offsets(seen) == [1, 8, 9, 10]


async def test_broker_started_while_redis_is_down_connects_once_it_is_up(
    tmp_path: Path,
) -> None:
    # Its port is chosen; nothing listens there yet.
    with stopped_after(RedisServer(tmp_path / "redis")) as server:
        async with running(server.url) as broker:
            ready_before = await broker.is_ready()
            server.start()
            await eventually(broker.is_ready, "the broker connected")
            await broker.subscribe(unique_channel())
    assert not ready_before


async def test_channel_whose_slot_moves_follows_it_to_a_new_epoch_on_its_new_shard(
    request: pytest.FixtureRequest,
) -> None:
    cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
    channel = unique_channel()
    slot = key_slot(topic_of("tidings", 0, channel).encode())
    handler = RecordingHandler()
    async with running(cluster.url, handler) as node_a, running(cluster.url) as node_b:
        await node_a.subscribe(channel)
        for n in range(3):
            await node_b.publish(channel, data(n))
        await handler.wait_for(3)
        owner = cluster.owner_of(slot)

        cluster.move_slot(slot, next(p for p in cluster.ports if p != owner))
        for n in range(3, 6):
            await node_b.publish(channel, data(n))
        await eventually(node_a.is_ready, "the broker followed the slot")
        last = await node_b.publish(channel, data(6))

        seen = await handler.wait_for(10)
    # The new shard cannot tell a migrated head from one restored older (see
    # redis_scripts): it renames the channel, and the node delivers the new epoch whole.
    new_epoch = last.position.epoch
    assert new_epoch != seen[0].epoch
    assert [p.epoch for p in seen[3:]] == [new_epoch] * 7
    assert offsets(seen) == [1, 2, 3, *range(1, 8)]
    assert [p.data for p in seen[3:]] == [data(n) for n in range(7)]
    assert len(handler.publications) == 10


async def test_not_ready_while_redis_is_down_and_ready_after(dedicated: RedisServer) -> None:
    channel = unique_channel()
    async with running(dedicated.url) as broker:
        await broker.subscribe(channel)
        assert await broker.is_ready()

        dedicated.stop()
        await eventually(lambda: is_not(broker.is_ready()), "the broker noticed Redis is down")
        with pytest.raises(BrokerError):
            await broker.publish(channel, data(1))
        with pytest.raises(BrokerError):
            await broker.subscribe(unique_channel())
        dedicated.start()

        await eventually(broker.is_ready, "the broker reconnected")
        result = await broker.publish(channel, data(2))
    assert result.position.offset == 1  # Redis lost everything: a new epoch's first


async def test_redis_restart_without_persistence_starts_a_new_epoch(
    dedicated: RedisServer,
) -> None:
    channel = unique_channel()
    handler = RecordingHandler()
    async with running(dedicated.url, handler) as node_a, running(dedicated.url) as node_b:
        await node_a.subscribe(channel)
        for n in range(3):
            await node_b.publish(channel, data(n))
        before = (await handler.wait_for(3))[-1].position

        dedicated.stop()
        await eventually(lambda: is_not(node_a.is_ready()), "the broker noticed Redis is down")
        dedicated.start()
        await eventually(node_a.is_ready, "the broker reconnected")
        first = await node_b.publish(channel, data(3))
        await node_b.publish(channel, data(4))

        seen = (await handler.wait_for(5))[3:]
        read = await node_b.history(channel, before)
    assert first.position.epoch != before.epoch
    assert [p.position for p in seen] == [Position(first.position.epoch, n) for n in (1, 2)]
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)


async def test_flushall_while_connected_starts_a_new_epoch(dedicated: RedisServer) -> None:
    channel = unique_channel()
    handler = RecordingHandler()
    async with running(dedicated.url, handler) as broker:
        await broker.subscribe(channel)
        old = await broker.publish(channel, data(1))
        dedicated.cli("FLUSHALL")

        new = await broker.publish(channel, data(2))
        seen = await handler.wait_for(2)
        read = await broker.history(channel, old.position)
    assert new.position.offset == 1
    assert new.position.epoch != old.position.epoch
    assert [p.position for p in seen] == [old.position, new.position]
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)


async def test_redis_rolled_back_to_a_snapshot_moves_the_channel_to_a_new_epoch(
    dedicated: RedisServer,
) -> None:
    channel = unique_channel()
    handler = RecordingHandler()
    async with running(dedicated.url, handler) as broker:
        await broker.subscribe(channel)
        for n in range(3):
            await broker.publish(channel, data(n))
        dedicated.cli("SAVE")  # the snapshot Redis will come back from holds offsets 1..3
        for n in range(3, 5):
            await broker.publish(channel, data(n))
        delivered = (await handler.wait_for(5))[-1].position

        dedicated.stop()
        await eventually(lambda: is_not(broker.is_ready()), "the broker noticed Redis is down")
        dedicated.start()
        await eventually(broker.is_ready, "the broker reconnected")

        async def is_renamed() -> bool:
            read = await broker.history(channel, delivered)
            return read.recovery == Gap(GapReason.EPOCH_CHANGED)

        await eventually(is_renamed, "the node moved the channel to a new epoch")
        result = await broker.publish(channel, data(5))
        seen = (await handler.wait_for(9))[5:]
    new_epoch = result.position.epoch
    assert new_epoch != delivered.epoch
    # What Redis kept, renamed, then the new publication: offsets 4 and 5 of the old
    # epoch (delivered before the restart) are never reused.
    assert [p.position for p in seen] == [Position(new_epoch, n) for n in (1, 2, 3, 4)]
    assert [p.data for p in seen] == [data(0), data(1), data(2), data(5)]
    assert len(handler.publications) == 9


async def _publish_when_back(broker: RedisBroker, channel: ChannelName, n: int) -> Position:
    """Publish once Redis answers again (a publish fails while it is down)."""
    async with asyncio.timeout(POLL_LIMIT_S):
        while True:
            try:
                return (await broker.publish(channel, data(n))).position
            except BrokerError:
                await asyncio.sleep(0.02)


def _positions_with_two_data(publications: list[Publication]) -> list[Position]:
    seen: dict[Position, bytes] = {}
    return [p.position for p in publications if seen.setdefault(p.position, p.data) != p.data]


async def test_redis_back_from_an_older_snapshot_never_gives_a_position_twice(
    dedicated: RedisServer,
) -> None:
    channel = unique_channel()
    handler = RecordingHandler()
    async with running(dedicated.url, handler) as node_a, running(dedicated.url) as node_b:
        await node_a.subscribe(channel)
        for n in range(3):
            await node_b.publish(channel, data(n))
        dedicated.cli("SAVE")  # Redis comes back holding offsets 1..3 only
        given = [(await node_b.publish(channel, data(n))).position for n in (3, 4)]
        await handler.wait_for(5)

        dedicated.stop()
        dedicated.start()
        # Node B publishes at once, before node A has noticed anything.
        after = await _publish_when_back(node_b, channel, 5)

        async def delivered_after() -> bool:
            return any(p.position == after for p in handler.publications)

        await eventually(delivered_after, "node A delivered the new publication")
    assert after.epoch != given[-1].epoch
    assert _positions_with_two_data(handler.publications) == []
    # Node A tells its hub of the new epoch (the hub makes its clients resume, and they
    # hear recovered: false): every publication after the old ones is of the new epoch.
    assert {p.epoch for p in handler.publications[5:]} == {after.epoch}


async def test_redis_back_from_an_aof_that_lost_its_last_second_never_gives_a_position_twice(
    tmp_path: Path,
) -> None:
    extra = ["--appendonly", "yes", "--appendfsync", "everysec"]
    server = RedisServer(tmp_path / "redis", extra=extra).start()
    channel = unique_channel()
    try:
        async with running(server.url) as broker:
            for n in range(3):
                await broker.publish(channel, data(n))
            # Redis writes the AOF before it answers; everysec fsyncs it a second later.
            [aof] = (tmp_path / "redis" / "appendonlydir").glob("*.incr.aof")
            synced = aof.stat().st_size
            given = [(await broker.publish(channel, data(n))).position for n in (3, 4)]
            server.stop()
            with aof.open("r+b") as file:  # a power cut: the unsynced tail is gone
                file.truncate(synced)
            server.start()

            after = await _publish_when_back(broker, channel, 5)
    finally:
        server.stop()
    assert after.epoch != given[-1].epoch


async def test_a_replica_promoted_without_the_last_writes_never_gives_a_position_twice(
    tmp_path: Path,
) -> None:
    cluster = start_cluster(tmp_path / "cluster", replicas=1)
    channel = unique_channel()
    slot = key_slot(ChannelKeys.of("tidings", channel).head.encode())
    try:
        async with running(cluster.url) as broker:
            for n in range(3):
                await broker.publish(channel, data(n))
            replica = cluster.cut_off_replica_of(cluster.owner_of(slot))
            given = [(await broker.publish(channel, data(n))).position for n in (3, 4)]
            await asyncio.to_thread(cluster.kill_master_of, slot, replica)

            after = await _publish_when_back(broker, channel, 5)
    finally:
        cluster.stop()
    assert after.epoch != given[-1].epoch


async def test_trusted_restarts_keep_the_epochs(dedicated: RedisServer) -> None:
    channel = unique_channel()
    async with running(dedicated.url + "?trust_restarts=yes") as broker:
        before = await broker.publish(channel, data(1))
        dedicated.cli("SAVE")
        dedicated.stop()
        dedicated.start()
        after = await _publish_when_back(broker, channel, 2)
    assert after == Position(before.position.epoch, 2)


def test_trust_restarts_is_yes_or_no() -> None:
    assert RedisTarget.parse("redis://h:1/0?trust_restarts=yes").trust_restarts
    assert not RedisTarget.parse("redis://h:1/0").trust_restarts
    with pytest.raises(ConfigError, match="trust_restarts"):
        RedisTarget.parse("redis://h:1/0?trust_restarts=maybe")


async def test_redis_rolled_back_in_place_is_caught_by_the_node_that_saw_later(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "redis", extra=["--enable-debug-command", "yes"]).start()
    channel = unique_channel()
    try:
        async with running(server.url) as broker:
            await broker.subscribe(channel)
            for n in range(3):
                await broker.publish(channel, data(n))
            server.cli("SAVE")
            given = [(await broker.publish(channel, data(n))).position for n in (3, 4)]
            server.cli("DEBUG", "RELOAD", "NOSAVE")  # same process, older data

            after = await _publish_when_back(broker, channel, 5)
    finally:
        server.stop()
    assert after.epoch != given[-1].epoch


# What is stored where


def test_every_key_and_the_topic_of_a_channel_share_one_slot() -> None:
    channel = ChannelName("room:45")
    names = [*ChannelKeys.of("tidings", channel).as_tuple(), topic_of("tidings", 0, channel)]

    assert len({key_slot(name.encode()) for name in names}) == 1


def test_url_prefix_is_ours_and_the_rest_goes_to_redis() -> None:
    target = RedisTarget.parse("redis-cluster://h:7000?prefix=app1&socket_timeout=2")

    assert target == RedisTarget("redis://h:7000?socket_timeout=2", True, "app1")
    with pytest.raises(ConfigError):
        RedisTarget.parse("redis://h:6379/0?prefix=a{b}")


def test_prefix_and_trust_restarts_may_come_from_the_file_and_the_url_wins() -> None:
    file = {"prefix": "tidings-test-file", "trust_restarts": True}

    from_file = RedisTarget.parse("redis://h:1/0", file)
    url_wins = RedisTarget.parse("redis://h:1/0?prefix=from-url&trust_restarts=no", file)
    from_environment = RedisTarget.parse("redis://h:1/0", {"trust_restarts": "yes"})

    assert (from_file.prefix, from_file.trust_restarts) == ("tidings-test-file", True)
    assert (url_wins.prefix, url_wins.trust_restarts) == ("from-url", False)
    assert from_environment.trust_restarts


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"prefx": "a"}, "brokers.redis: unknown setting 'prefx'; known: ['batch', 'prefix'"),
        ({"prefix": 7}, "brokers.redis.prefix must be a string, got 7"),
        ({"prefix": "a{b}"}, "prefix must be non-empty and without braces"),
        ({"trust_restarts": "maybe"}, "brokers.redis.trust_restarts must be true or false"),
    ],
)
def test_settings_of_the_file_the_broker_does_not_read_are_refused_in_one_line(
    options: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError) as error:
        RedisTarget.parse("redis://h:1/0", options)
    assert complaint in str(error.value)
    assert "\n" not in str(error.value)


async def test_the_factory_hands_the_redis_broker_its_table_of_the_file(shared_url: str) -> None:
    channel = unique_channel()
    namespaces, dedupe = NAMESPACES, DedupeOptions()
    tables = {"redis": {"prefix": "tidings-test-file"}}
    url = shared_url.split("?", maxsplit=1)[0]  # without the suite's own prefix
    from_file = create_broker(url, None, namespaces, dedupe, options=tables)
    url_wins = create_broker(
        url + "?prefix=tidings-test-url",
        None,
        namespaces,
        dedupe,
        options=tables,
    )
    async with redis_client(shared_url) as admin:
        for broker in (from_file, url_wins):
            await broker.start(RecordingHandler())
            try:
                await broker.publish(channel, data(1))
            finally:
                await broker.close()
        stored = [
            await admin.exists(ChannelKeys.of(prefix, channel).history)
            for prefix in ("tidings-test-file", "tidings-test-url", "tidings")
        ]
    assert stored == [1, 1, 0]


async def test_history_of_a_channel_never_published_makes_a_head_that_expires(
    shared_url: str,
) -> None:
    channel, published = unique_channel(), unique_channel()
    async with running(shared_url) as broker, redis_client(shared_url) as admin:
        read = await broker.history(channel)
        await broker.history(published)
        await broker.publish(published, data(1))

        empty_ttl = await admin.pttl(ChannelKeys.of("tidings-test", channel).head)
        kept_ttl = await admin.pttl(ChannelKeys.of("tidings-test", published).head)
    assert read.head.offset == 0
    assert 0 < empty_ttl <= HOUR_MS
    assert kept_ttl == -1  # no expiry once published to


async def test_history_expiry_uses_the_namespace_ttl_and_size(shared_url: str) -> None:
    channel = unique_channel("small")
    clock = FakeClock()
    broker = RedisBroker(shared_url, NAMESPACES, clock=clock)
    await broker.start(RecordingHandler())
    try:
        for n in range(SMALL_HISTORY + 2):
            await broker.publish(channel, data(n))
        async with redis_client(shared_url) as admin:
            keys = ChannelKeys.of("tidings-test", channel)
            length = await admin.xlen(keys.history)
            ttl = await admin.pttl(keys.history)
        read = await broker.history(channel)
    finally:
        await broker.close()
    assert length == SMALL_HISTORY
    assert 0 < ttl <= HOUR_MS
    assert isinstance(read.recovery, Replay)
    assert offsets(list(read.recovery.publications)) == [3, 4, 5]


# Presence on many nodes


@asynccontextmanager
async def presence_node(
    url: str,
    changes: list[PresenceChange],
    clock: FakeClock,
    *,
    refresh_s: float = PRESENCE_REFRESH_S,
    handler: RecordingHandler | None = None,
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(
        url, NAMESPACES, clock=clock, presence_lifetime_s=LIFETIME_S, presence_refresh_s=refresh_s
    )
    broker.presence_store.listen(changes.append)
    await broker.start(handler or RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


async def test_entries_of_a_node_that_stopped_refreshing_expire_after_the_lifetime(
    shared_url: str,
) -> None:
    channel, clock = unique_channel(), FakeClock()
    key = presence_key_of("tidings-test", channel)
    async with (
        presence_node(shared_url, [], clock) as dead,
        presence_node(shared_url, [], clock) as alive,
        redis_client(shared_url) as admin,
    ):
        await dead.presence_store.join(channel, "d.1", "dora")
        await alive.presence_store.join(channel, "l.1", "lena")
        clock.advance(LIFETIME_MS - 1)
        before = await alive.presence_store.presence(channel)
        clock.advance(1)
        after = await alive.presence_store.presence(channel)
        fields = await admin.hkeys(key)
        ttl = await admin.pttl(key)
    # Nobody refreshed within the test (refresh every 10 s of real time), so both
    # entries expired; the list dropped them from Redis, not only from its answer.
    assert before == {"d.1": "dora", "l.1": "lena"}
    assert after == {}
    assert fields == []
    assert ttl == -2  # the emptied hash is gone


async def test_a_node_refreshes_its_entries_so_they_outlive_the_lifetime(
    shared_url: str,
) -> None:
    channel, clock = unique_channel(), FakeClock()
    key = presence_key_of("tidings-test", channel)
    async with (
        presence_node(shared_url, [], clock, refresh_s=0.02) as node,
        redis_client(shared_url) as admin,
    ):
        await node.presence_store.join(channel, "n.1", "nina")
        await node.presence_store.join(channel, "n.2", "noor")
        await node.presence_store.leave(channel, "n.2")
        clock.advance(LIFETIME_MS - 1)
        renewed_until = clock.now_ms() + LIFETIME_MS

        async def renewed() -> bool:
            raw = await admin.hget(key, "n.1")
            return raw is not None and json.loads(raw)["expires_ms"] >= renewed_until

        await eventually(renewed, "the node renewed its entry")
        clock.advance(LIFETIME_MS - 1)  # past the first lifetime, within the renewed one
        listed = await node.presence_store.presence(channel)
    assert listed == {"n.1": "nina"}  # and the left client was not brought back


def test_a_presence_refresh_must_be_shorter_than_the_lifetime() -> None:
    with pytest.raises(ConfigError):
        RedisBroker(SHARED_REDIS_URL, NAMESPACES, presence_lifetime_s=5, presence_refresh_s=5)


def test_the_presence_hash_shares_the_channel_slot() -> None:
    channel = ChannelName("room:45")
    names = [presence_key_of("tidings", channel), topic_of("tidings", 0, channel)]

    assert len({key_slot(name.encode()) for name in names}) == 1


# Node commands between nodes


def own_prefix(url: str) -> str:
    """``url`` with a prefix of this test's own: its control topic reaches its nodes only
    (the shared Redis serves other tests, maybe other checkouts, at once)."""
    base, _, query = url.partition("?")
    kept = "&".join(part for part in query.split("&") if part and not part.startswith("prefix="))
    prefix = f"prefix=tidings-test-{secrets.token_hex(4)}"
    return f"{base}?{kept}&{prefix}" if kept else f"{base}?{prefix}"


@asynccontextmanager
async def commanded(url: str, commands: RecordingCommands) -> AsyncIterator[RedisBroker]:
    async with running(url) as broker:
        broker.listen(commands)
        yield broker


async def test_a_node_command_reaches_every_node_once_the_sender_included(
    shared_url: str,
) -> None:
    url = own_prefix(shared_url)
    a, b, c = RecordingCommands(), RecordingCommands(), RecordingCommands()
    first = DisconnectUser("alice", 4003, "banned")
    second = DisconnectUser("bob", 4500, "come back later")
    async with commanded(url, a) as node_a, commanded(url, b) as node_b, commanded(url, c):
        nodes = await node_a.send_to_nodes(first)
        handled_at_once = list(a.commands)
        await b.wait_for(1)
        await c.wait_for(1)
        # B sends after it received the first: Redis hands A its own echo of the first
        # before the second, so once A has the second, it has ignored its echo.
        assert await node_b.send_to_nodes(second) == 3
        await a.wait_for(2)
        await c.wait_for(2)
    assert nodes == 3
    assert handled_at_once == [first]
    assert a.commands == b.commands == c.commands == [first, second]


async def test_databases_do_not_hear_each_others_node_commands(shared_url: str) -> None:
    url = own_prefix(shared_url)
    other_db = url.replace("/0?", "/1?", 1)
    assert other_db != url
    here, there = RecordingCommands(), RecordingCommands()
    async with (
        commanded(url, here),
        running(url) as peer,
        commanded(other_db, there) as elsewhere,
    ):
        assert await elsewhere.send_to_nodes(DisconnectUser("eve", 4003, "elsewhere")) == 1
        # Sent after the other database's: had "here" heard that one, it would have
        # heard it first.
        assert await peer.send_to_nodes(DisconnectUser("bob", 4003, "banned")) == 2
        await here.wait_for(1)
    assert [command.user for command in here.commands] == ["bob"]
    assert [command.user for command in there.commands] == ["eve"]


async def test_a_node_hears_node_commands_again_after_it_reconnected(
    deployment: Deployment,
) -> None:
    a, b = RecordingCommands(), RecordingCommands()
    async with (
        commanded(deployment.node_a_url, a) as node_a,
        commanded(deployment.url, b) as node_b,
    ):
        await deployment.lose_node_a(node_a)
        with pytest.raises(BrokerError):
            await node_a.send_to_nodes(DisconnectUser("alice", 4003, "while away"))
        deployment.let_node_a_back()
        await eventually(node_a.is_ready, "the broker reconnected")

        command = DisconnectUser("bob", 4003, "banned")
        assert await node_b.send_to_nodes(command) == 2
        await a.wait_for(2)
    # The first A handled itself though Redis could not carry it; B never heard it.
    assert [c.user for c in a.commands] == ["alice", "bob"]
    assert b.commands == [command]
