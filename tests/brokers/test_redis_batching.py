"""The Redis broker's auto-batching (``redis_runner``): publishes started together share
one pipeline and one script call, yet each caller gets its own position, offsets stay
gap-free, a batch that fails fails exactly its own callers, and an idempotency key sent
twice in one batch is published once. And the ``batch`` setting that turns it off.

Batching is observed, not assumed: on a dedicated ``redis-server`` (no other client)
``INFO commandstats`` counts the script calls, which must be fewer than the publishes.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import pytest
import redis

from tests.support.handler import RecordingHandler
from tests.support.redis_cluster import (
    LocalRedisCluster,
    RedisServer,
    redis_cluster,  # noqa: F401  (a fixture used here)
)
from tidings.brokers.base import PublishResult
from tidings.brokers.redis import RedisBroker, RedisTarget
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.recovery import Replay
from tidings.errors import BrokerError, ConfigError

POLL_LIMIT_S: Final = 20.0
NAMESPACES: Final = Namespaces(
    {NamespaceName("room"): NamespaceOptions(history=HistoryOptions(1_000, 3_600_000))}
)


def unique_channels(count: int) -> list[ChannelName]:
    run = secrets.token_hex(4)
    return [ChannelName(f"room:{run}-{n}") for n in range(count)]


def data(n: int) -> bytes:
    return b'{"n":%d}' % n


def script_calls(server: RedisServer) -> int:
    """EVALSHA and EVAL calls the server has run so far."""
    with redis.Redis(port=server.port) as client:
        stats = client.info("commandstats")
    return sum(int((stats.get(f"cmdstat_{n}") or {}).get("calls", 0)) for n in ("evalsha", "eval"))


@asynccontextmanager
async def running(
    url: str, *, publish_timeout_s: float = 1.5, probe_interval_s: float = 1.0
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(
        url,
        NAMESPACES,
        reconnect_max_delay_s=0.2,
        publish_timeout_s=publish_timeout_s,
        probe_interval_s=probe_interval_s,
    )
    await broker.start(RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()


async def publish_concurrently(
    broker: RedisBroker, channels: list[ChannelName], per_channel: int
) -> list[tuple[ChannelName, bytes, PublishResult]]:
    """Start every publish at once (one loop iteration); return what each was told."""
    calls = [(channel, data(n)) for n in range(per_channel) for channel in channels]
    results = await asyncio.gather(*(broker.publish(c, d) for c, d in calls))
    return [(c, d, result) for (c, d), result in zip(calls, results, strict=True)]


def assert_gap_free_and_distinct(results: list[tuple[ChannelName, bytes, PublishResult]]) -> None:
    by_channel: dict[ChannelName, list[int]] = {}
    for channel, _, result in results:
        assert not result.duplicate
        by_channel.setdefault(channel, []).append(result.position.offset)
    for channel, given in by_channel.items():
        # Each caller its own offset, and together every offset from 1, no hole.
        assert sorted(given) == list(range(1, len(given) + 1)), channel
    epochs = {(channel, result.position.epoch) for channel, _, result in results}
    assert len(epochs) == len(by_channel)  # one epoch per channel


def unread_bytes(port: int) -> int:
    """Bytes sent to the server on ``port`` that it has not read (``/proc/net/tcp``)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rpartition(":")[2], 16) == port:
            total += int(fields[4].partition(":")[2], 16)  # tx_queue:rx_queue
    return total


@pytest.mark.parametrize(("channel_count", "per_channel"), [(1, 300), (37, 8)])
async def test_concurrent_publishes_get_their_own_gap_free_offsets_in_fewer_script_calls(
    dedicated: RedisServer, channel_count: int, per_channel: int
) -> None:
    channels = unique_channels(channel_count)
    async with running(dedicated.url) as broker:
        await broker.publish(unique_channels(1)[0], data(0))  # connected, script loaded
        before = script_calls(dedicated)
        results = await publish_concurrently(broker, channels, per_channel)
        made = script_calls(dedicated) - before
        # What callers were told is what Redis holds.
        for channel in channels:
            read = await broker.history(channel)
            assert isinstance(read.recovery, Replay)
            stored = [(p.offset, p.data) for p in read.recovery.publications]
            told = sorted((r.position.offset, d) for c, d, r in results if c == channel)
            assert stored == told
    assert_gap_free_and_distinct(results)
    assert made < len(results)


async def test_without_batching_each_publish_is_its_own_script_call(
    dedicated: RedisServer,
) -> None:
    channels = unique_channels(5)
    async with running(dedicated.url + "?batch=no") as broker:
        await broker.publish(unique_channels(1)[0], data(0))  # connected, script loaded
        before = script_calls(dedicated)
        results = await publish_concurrently(broker, channels, 20)
        made = script_calls(dedicated) - before
    assert made == len(results)
    assert_gap_free_and_distinct(results)


async def test_concurrent_publishes_on_a_cluster_get_gap_free_offsets_per_channel(
    redis_cluster: LocalRedisCluster,  # noqa: F811  (the fixture)
) -> None:
    channels = unique_channels(24)  # spread over the three masters' slots
    async with running(redis_cluster.url) as broker:
        results = await publish_concurrently(broker, channels, 12)
    assert_gap_free_and_distinct(results)


async def test_the_same_key_twice_in_one_batch_is_published_once(
    dedicated: RedisServer,
) -> None:
    channel = unique_channels(1)[0]
    async with running(dedicated.url) as broker:
        await broker.publish(unique_channels(1)[0], data(0))
        before = script_calls(dedicated)
        first, second = await asyncio.gather(
            broker.publish(channel, data(1), key="order-7"),
            broker.publish(channel, data(2), key="order-7"),
        )
        assert script_calls(dedicated) - before == 1  # one batch, one script call
        read = await broker.history(channel)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.position == first.position
    assert isinstance(read.recovery, Replay)
    assert [(p.offset, p.data) for p in read.recovery.publications] == [(1, data(1))]


async def test_a_batch_cut_off_by_a_killed_redis_fails_its_callers_and_later_ones_succeed(
    dedicated: RedisServer,
) -> None:
    channels = unique_channels(4)
    # Long time-outs: the failure must come from the lost connection, not a timer.
    async with running(dedicated.url, publish_timeout_s=60.0, probe_interval_s=60.0) as broker:
        answered = await publish_concurrently(broker, channels, 5)
        dedicated.freeze()  # what is sent from now on is never answered
        cut_off = [
            asyncio.ensure_future(broker.publish(c, data(n))) for n in range(5) for c in channels
        ]
        # The batch left: the frozen server holds it unread (a poll, with a deadline).
        async with asyncio.timeout(POLL_LIMIT_S):
            while unread_bytes(dedicated.port) < len(cut_off) * len(data(0)):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        dedicated.stop()  # SIGKILL: the connection breaks with the batch unanswered
        outcomes = await asyncio.wait_for(
            asyncio.gather(*cut_off, return_exceptions=True), POLL_LIMIT_S
        )
        dedicated.start()
        later = None
        async with asyncio.timeout(POLL_LIMIT_S):
            while later is None:
                try:
                    later = await broker.publish(channels[0], data(99))
                except BrokerError:
                    await asyncio.sleep(0.05)
    assert_gap_free_and_distinct(answered)
    assert all(isinstance(outcome, BrokerError) for outcome in outcomes), outcomes
    # Redis came back empty (no persistence): a new epoch, from offset 1.
    assert later.position.offset == 1
    assert later.position.epoch != answered[0][2].position.epoch


def test_batch_is_a_yes_or_no_setting_on_by_default() -> None:
    assert RedisTarget.parse("redis://h:1/0").batch
    assert not RedisTarget.parse("redis://h:1/0?batch=no").batch
    assert not RedisTarget.parse("redis://h:1/0", {"batch": False}).batch
    assert RedisTarget.parse("redis://h:1/0?batch=yes", {"batch": False}).batch  # URL wins
    assert not RedisTarget.parse("redis://h:1/0", {"batch": "false"}).batch  # environment
    with pytest.raises(ConfigError, match="batch must be yes or no"):
        RedisTarget.parse("redis://h:1/0?batch=maybe")
    with pytest.raises(ConfigError, match=r"brokers\.redis\.batch must be true or false"):
        RedisTarget.parse("redis://h:1/0", {"batch": 3})
