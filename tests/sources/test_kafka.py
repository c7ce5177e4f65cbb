"""The Kafka source (tidings.sources.kafka) against a real Kafka-protocol broker (Tansu, see
tests/support/tansu.py) and a real tidings broker (memory): records reach their channels,
bad records are skipped and counted without stalling their partition, offsets are
committed only after the publications are stored, a rebalance hands partitions over
without publishing a record twice, and ``check`` names what is missing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Final

import pytest

from tests.support.kafka import (
    CommitReader,
    Produce,
    commit_reader,
    create_topic,
    produce,
    wait_until,
)
from tests.support.server import free_port
from tests.support.source_publisher import BrokerPublisher
from tests.support.tansu import Tansu, running_tansu
from tidings.brokers.base import PublishResult
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.recovery import Replay
from tidings.errors import BrokerError, ConfigError
from tidings.sources import kafka
from tidings.sources.kafka import KafkaSource

TOPIC: Final = "orders"
GROUP: Final = "tidings-orders"
MAX_DATA_BYTES: Final = 200
# History holds every record a test produces: the rebalance test's trickle runs as long
# as the machine makes it (over 1,000 records a room when it is loaded).
NAMESPACES: Final = Namespaces(
    {
        NamespaceName("chat"): NamespaceOptions(
            history=HistoryOptions(100_000, 3_600_000), max_data_bytes=MAX_DATA_BYTES
        )
    }
)


@pytest.fixture
def tansu() -> Iterator[Tansu]:
    with running_tansu() as broker:
        yield broker


@pytest.fixture
async def broker() -> AsyncIterator[MemoryBroker]:
    memory = MemoryBroker(NAMESPACES)
    await memory.start(lambda publication: None)
    yield memory
    await memory.close()


@dataclass
class Counts:
    """What the source counted, by the framework's functions."""

    published: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> Counts:
    recorded = Counts()
    monkeypatch.setattr(
        kafka, "count_skipped", lambda source, reason: recorded.skipped.append((source, reason))
    )
    return recorded


class CountingPublisher:
    """The publisher as one source sees it, counting that source's new publications as
    the node's publisher does (``NodePublisher``)."""

    def __init__(self, source: str, inner: BrokerPublisher, counts: Counts | None) -> None:
        self._source = source
        self._inner = inner
        self._counts = counts

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        result = await self._inner.publish(channel, data, key=key)
        if self._counts is not None and not result.duplicate:
            self._counts.published[self._source] += 1
        return result


class RecordingPublisher(BrokerPublisher):
    """Publishes through the broker, recording each key asked for; fails with
    ``BrokerError`` the publications whose key is in ``failing``, and holds the one
    whose key is ``held`` (``holding`` is set) until ``released`` is."""

    def __init__(self, memory: MemoryBroker) -> None:
        super().__init__(memory, NAMESPACES)
        self.keys: Counter[str] = Counter()
        self.failing: set[str] = set()
        self.failed = asyncio.Event()
        self.held: str | None = None
        self.holding = asyncio.Event()
        self.released = asyncio.Event()

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        self.keys[key] += 1
        if key in self.failing:
            self.failed.set()
            raise BrokerError(f"{key} is made to fail")
        if key == self.held:
            self.holding.set()
            await self.released.wait()
        return await super().publish(channel, data, key=key)


def _source(servers: str, name: str = "orders", **settings: object) -> KafkaSource:
    table: dict[str, object] = {
        "kind": "kafka",
        "bootstrap_servers": servers,
        "topics": [TOPIC],
        "group_id": GROUP,
        "channel": "chat:{key}",
        "session_timeout": "1s",  # a member gone without leaving is noticed fast
        **settings,
    }
    # No wait between retries beyond 10 ms: the tests see a retry at once.
    return KafkaSource(name, KafkaSource.from_settings(name, table).settings, uniform=_short)


def _short(low: float, high: float) -> float:
    return min(high, 0.01)


@asynccontextmanager
async def _running(
    source: KafkaSource, publisher: BrokerPublisher, counts: Counts | None = None
) -> AsyncIterator[None]:
    task = asyncio.create_task(source.run(CountingPublisher(source.name, publisher, counts)))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.wait([task])
        assert task.cancelled(), task.exception()


async def _history(memory: MemoryBroker, channel: str) -> list[object]:
    read = await memory.history(ChannelName(channel))
    assert isinstance(read.recovery, Replay)
    return [json.loads(publication.data) for publication in read.recovery.publications]


async def _committed(commits: CommitReader, partitions: int, target: int) -> bool:
    return await commits.total(TOPIC, partitions) >= target


def _json(value: object) -> bytes:
    return json.dumps(value).encode()


# -- records to channels ---------------------------------------------------------------------


async def test_records_reach_their_channels_in_partition_order(
    tansu: Tansu, broker: MemoryBroker, counts: Counts
) -> None:
    servers = tansu.bootstrap_servers
    await create_topic(servers, TOPIC, 2)
    records = [
        Produce(
            _json({"room": room, "body": {"n": n}}),
            headers=[("ns", b"chat")],
            partition=n % 2,
        )
        for n in range(40)
        for room in ("a", "b")
    ]
    await produce(servers, TOPIC, records)
    source = _source(servers, channel="{header.ns}:{value.room}", data="value.body")
    async with (
        _running(source, BrokerPublisher(broker, NAMESPACES), counts),
        commit_reader(servers, GROUP) as commits,
    ):
        await wait_until(partial(_committed, commits, 2, len(records)), "all committed")

    # Each room's channel has its records once; those of one partition in their order.
    for room in ("a", "b"):
        history = await _history(broker, f"chat:{room}")
        for partition in (0, 1):
            ns = [entry["n"] for entry in history if entry["n"] % 2 == partition]  # type: ignore[index]
            assert ns == list(range(partition, 40, 2))
        assert len(history) == 40
    assert counts.published == {"orders": 80}
    # The idempotency key is <topic>:<partition>:<offset>: the first record, again, is a duplicate.
    again = await broker.publish(ChannelName("chat:a"), b"{}", key=f"{TOPIC}:0:0")
    assert again.duplicate


# -- bad records -------------------------------------------------------------------------------


async def test_bad_records_are_skipped_logged_and_counted_and_the_partition_goes_on(
    tansu: Tansu, broker: MemoryBroker, counts: Counts, caplog: pytest.LogCaptureFixture
) -> None:
    servers = tansu.bootstrap_servers
    await create_topic(servers, TOPIC, 1)
    records = [
        Produce(_json({"n": 1}), key=b"r"),
        Produce(b"not json", key=b"r"),  # offset 1
        Produce(None, key=b"r"),  # a tombstone
        Produce(_json({"n": 3})),  # no key: no channel
        Produce(_json({"n": 4, "pad": "x" * MAX_DATA_BYTES}), key=b"r"),  # refused: too large
        Produce(_json({"n": 5}), key=b"r"),
    ]
    await produce(servers, TOPIC, records)
    caplog.set_level(logging.WARNING, logger="tidings.sources.kafka")
    async with (
        _running(_source(servers), BrokerPublisher(broker, NAMESPACES), counts),
        commit_reader(servers, GROUP) as commits,
    ):
        await wait_until(partial(_committed, commits, 1, len(records)), "all committed")

    assert await _history(broker, "chat:r") == [{"n": 1}, {"n": 5}]
    assert counts.skipped == [
        ("orders", "not_json"),
        ("orders", "not_json"),
        ("orders", "no_channel"),
        ("orders", "too_large"),
    ]
    assert counts.published == {"orders": 2}
    logged = [record.getMessage() for record in caplog.records]
    assert any("orders[0] offset 1: the value is not JSON" in line for line in logged), logged
    assert any("orders[0] offset 4: data is" in line for line in logged), logged


# -- commits -----------------------------------------------------------------------------------


async def test_offsets_are_committed_only_after_the_publication_is_stored(
    tansu: Tansu, broker: MemoryBroker, counts: Counts
) -> None:
    servers = tansu.bootstrap_servers
    await create_topic(servers, TOPIC, 1)
    await produce(servers, TOPIC, [Produce(_json({"n": n}), key=b"r") for n in range(3)])
    publisher = RecordingPublisher(broker)
    publisher.failing.add(f"{TOPIC}:0:1")  # the broker fails on the second record
    async with (
        _running(_source(servers), publisher),
        commit_reader(servers, GROUP) as commits,
    ):
        await asyncio.wait_for(publisher.failed.wait(), 30)
        await wait_until(lambda: _retried(publisher, f"{TOPIC}:0:1"), "a retry")
        # Stuck on the second record: nothing past the first is committed.
        assert await commits.offsets(TOPIC, 1) in ([0], [1])
        publisher.failing.clear()  # the broker is back
        await wait_until(partial(_committed, commits, 1, 3), "all committed")

    assert await _history(broker, "chat:r") == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert publisher.keys[f"{TOPIC}:0:2"] == 1


async def _retried(publisher: RecordingPublisher, key: str) -> bool:
    return publisher.keys[key] >= 2


# -- rebalances --------------------------------------------------------------------------------


async def test_rebalance_hands_partitions_over_without_publishing_a_record_twice(
    tansu: Tansu, broker: MemoryBroker, counts: Counts
) -> None:
    servers = tansu.bootstrap_servers
    await create_topic(servers, TOPIC, 3)
    publisher = RecordingPublisher(broker)
    trickle = _Trickle(servers)
    async with (
        commit_reader(servers, GROUP) as commits,
        trickle.running(),
        _running(_source(servers, "first"), publisher, counts),
    ):
        await wait_until(lambda: _published(counts, "first", 100), "the first publishing")
        # The second joins while records keep coming: the first's partitions are revoked
        # mid-stream and some are handed over.
        async with _running(_source(servers, "second"), publisher, counts):
            await wait_until(lambda: _published(counts, "second", 100), "the second too")
            produced = await trickle.stop()
            await wait_until(partial(_committed, commits, 3, produced), "all committed")

    # Every record was asked for once, by one of the two sources, and landed in order.
    assert set(publisher.keys.values()) == {1}
    assert len(publisher.keys) == produced
    for room in _Trickle.ROOMS:
        history = await _history(broker, f"chat:{room}")
        assert history == [{"n": n} for n in range(produced // len(_Trickle.ROOMS))]


async def test_revocation_mid_batch_commits_what_was_stored_before_handing_over(
    tansu: Tansu, broker: MemoryBroker, caplog: pytest.LogCaptureFixture
) -> None:
    servers = tansu.bootstrap_servers
    await create_topic(servers, TOPIC, 3)
    rooms = [f"r{n}" for n in range(6)]
    backlog = [
        Produce(_json({"n": n}), key=room.encode(), partition=index % 3)
        for n in range(250)
        for index, room in enumerate(rooms)
    ]
    await produce(servers, TOPIC, backlog)
    publisher = RecordingPublisher(broker)
    publisher.held = f"{TOPIC}:0:100"  # the first source stops mid-batch on this record
    caplog.set_level(logging.INFO, logger="tidings.sources.kafka")
    async with (
        commit_reader(servers, GROUP) as commits,
        _running(_source(servers, "first"), publisher),
    ):
        await asyncio.wait_for(publisher.holding.wait(), 30)
        async with _running(_source(servers, "second"), publisher):
            # The second's joining revokes the first's partitions while it is held.
            await wait_until(lambda: _logged(caplog, "first: handing over"), "a revocation")
            publisher.released.set()
            await wait_until(partial(_committed, commits, 3, len(backlog)), "all committed")

    # The records the first had stored before the revocation were committed by it: no
    # one asked for them again.
    assert set(publisher.keys.values()) == {1}
    assert len(publisher.keys) == len(backlog)
    for room in rooms:
        assert await _history(broker, f"chat:{room}") == [{"n": n} for n in range(250)]


async def _published(counts: Counts, source: str, at_least: int) -> bool:
    return counts.published[source] >= at_least


class _Trickle:
    """Produces one record per room, round after round, until stopped; each room's key
    stays in one partition."""

    ROOMS: Final = tuple(f"r{n}" for n in range(6))

    def __init__(self, servers: str) -> None:
        self._servers = servers
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[int] | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._task = asyncio.create_task(self._produce())
        try:
            yield
        finally:
            await self.stop()

    async def stop(self) -> int:
        """Stop producing; return how many records were produced."""
        assert self._task is not None
        self._stopping.set()
        return await self._task

    async def _produce(self) -> int:
        rounds = 0
        while not self._stopping.is_set():
            records = [
                Produce(_json({"n": rounds}), key=room.encode(), partition=index % 3)
                for index, room in enumerate(self.ROOMS)
            ]
            await produce(self._servers, TOPIC, records)
            rounds += 1
        return rounds * len(self.ROOMS)


# -- Kafka failures ----------------------------------------------------------------------------


async def test_source_started_before_kafka_consumes_once_kafka_answers(
    broker: MemoryBroker, counts: Counts, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    table: Mapping[str, object] = {
        "bootstrap_servers": f"127.0.0.1:{port}",
        "topics": TOPIC,
        "group_id": GROUP,
        "channel": "chat:{key}",
        "session_timeout": "1s",
    }
    source = KafkaSource(
        "orders", KafkaSource.from_settings("orders", table).settings, uniform=_short
    )
    caplog.set_level(logging.WARNING, logger="tidings.sources.kafka")
    async with _running(source, BrokerPublisher(broker, NAMESPACES), counts):
        await wait_until(lambda: _logged(caplog, "consuming again in"), "a failure logged")
        with running_tansu(port) as tansu:
            await create_topic(tansu.bootstrap_servers, TOPIC, 1)
            await produce(tansu.bootstrap_servers, TOPIC, [Produce(_json({"n": 1}), key=b"r")])
            await wait_until(lambda: _published(counts, "orders", 1), "the record published")
    assert await _history(broker, "chat:r") == [{"n": 1}]


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return any(text in record.getMessage() for record in caplog.records)


# -- check -------------------------------------------------------------------------------------


async def test_check_names_the_topics_kafka_lacks(tansu: Tansu) -> None:
    servers = tansu.bootstrap_servers
    await create_topic(servers, TOPIC, 1)
    await _source(servers).check()
    source = _source(servers, topics=[TOPIC, "invoices", "refunds"])
    with pytest.raises(ConfigError, match="has no topic invoices, refunds; create it"):
        await source.check()


async def test_check_says_kafka_does_not_answer() -> None:
    table: Mapping[str, object] = {
        "bootstrap_servers": f"127.0.0.1:{free_port()}",
        "topics": TOPIC,
        "channel": "chat:{key}",
    }
    source = KafkaSource.from_settings("orders", table)
    with pytest.raises(ConfigError, match=r"sources.orders: Kafka does not answer at 127\.0\.0\.1"):
        await source.check()
