"""The Kafka source: consumes topics in a consumer group and publishes each record through
the node's broker (docs/sources.md, "Kafka"). I/O: a Kafka connection (aiokafka, the
``kafka`` extra) and the publisher.

Theory of operation. Each record is published with the idempotency key
``<topic>:<partition>:<offset>``, and a partition's Kafka offset is committed only after
the publications of the records before it are stored (auto-commit is off). So a crash
loses nothing (the records after the last commit are consumed again) and repeats nothing
into channels (their publications carry the same keys, and the broker keeps the first,
within its dedupe window: a replay comes soon after a restart, unless the node stayed
down longer than the window).

A batch from ``getmany`` is published one task per partition: records of one partition
in their order (so a channel gets a partition's records in partition order), partitions
side by side (Kafka orders nothing across them). A record that cannot be published (its
value is not JSON, it gives no channel, the publisher refuses it) is skipped, logged with
its topic, partition and offset, and counted; the next one goes on, so no record stalls
its partition. A broker failure is retried with the same key, with backoff, for as long
as the partition is this node's.

Rebalances. ``_Consumption`` is the rebalance listener. When partitions are revoked it
first closes the door (``_owned`` empty, ``_generation`` moved on: a partition's task
checks both before each record and stops), then waits for the batch in progress under
``_lock`` (at most the publish in flight), then commits what was stored and forgets it.
The new owner resumes at that commit, so no record of a revoked partition is published
here after the revocation returns. A record fetched before a rebalance is dropped if the
generation moved: its partition is read again from the commit if it is still ours.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from tidings.core.backoff import Backoff
from tidings.errors import BrokerError, ConfigError
from tidings.sources.base import (
    SourcePublisher,
    SourceRowRefused,
    count_skipped,
)
from tidings.sources.kafka_mapping import KafkaRecord, Mapped, Skip
from tidings.sources.kafka_settings import KafkaSettings

logger = logging.getLogger(__name__)

POLL_TIMEOUT_MS: Final = 1000
# Records per batch: bounds the node's memory whatever the topics hold.
MAX_BATCH_RECORDS: Final = 500
# Kafka's own advice: heartbeats at a third of the session time-out.
HEARTBEATS_PER_SESSION: Final = 3
RETRY_BASE_S: Final = 0.1
RETRY_CAP_S: Final = 5.0
COMMIT_TIMEOUT_S: Final = 10.0
CHECK_TIMEOUT_S: Final = 10.0


def record_key(record: KafkaRecord) -> str:
    """The idempotency key of ``record``'s publication: ``<topic>:<partition>:<offset>``."""
    return f"{record.topic}:{record.partition}:{record.offset}"


class KafkaSource:
    """Publishes the records of Kafka topics in channels (see the module docstring)."""

    def __init__(
        self,
        name: str,
        settings: KafkaSettings,
        *,
        uniform: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self._name = name
        self.settings = settings
        self._uniform = uniform

    @classmethod
    def from_settings(cls, name: str, table: Mapping[str, object]) -> KafkaSource:
        """Make the source of a ``[[sources]]`` table of ``kind = "kafka"``; no I/O.

        Raises:
            ConfigError: a missing or bad setting (one line naming it).
        """
        return cls(name, KafkaSettings.parse(name, table))

    @property
    def name(self) -> str:
        """The source's name."""
        return self._name

    async def check(self) -> None:
        """Check that Kafka answers and has every topic of the source.

        Raises:
            ConfigError: Kafka does not answer, or a topic does not exist.
        """
        servers = ",".join(self.settings.bootstrap_servers)
        consumer = AIOKafkaConsumer(
            bootstrap_servers=list(self.settings.bootstrap_servers),
            client_id=f"tidings-{self._name}-check",
            request_timeout_ms=int(CHECK_TIMEOUT_S * 1000),
        )
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                await consumer.start()
                existing: set[str] = await consumer.topics()
        except (KafkaError, TimeoutError) as error:
            raise ConfigError(
                f"sources.{self._name}: Kafka does not answer at {servers} "
                f"({type(error).__name__}); check bootstrap_servers"
            ) from None
        finally:
            await consumer.stop()
        missing = [topic for topic in self.settings.topics if topic not in existing]
        if missing:
            raise ConfigError(
                f"sources.{self._name}: Kafka at {servers} has no topic {', '.join(missing)}; "
                "create it or fix topics"
            )

    async def run(self, publisher: SourcePublisher) -> None:
        """Consume and publish until cancelled; reconnect after a Kafka failure."""
        logger.info(
            "kafka source %s: consuming %s from %s in group %s",
            self._name,
            ", ".join(self.settings.topics),
            ",".join(self.settings.bootstrap_servers),
            self.settings.group_id,
        )
        backoff = self.retry_backoff()
        while True:
            consumption = _Consumption(self, publisher, self._consumer())
            try:
                await consumption.run(on_running=backoff.reset)
            except KafkaError as error:
                delay_s = backoff.next_delay_s()
                logger.warning(
                    "kafka source %s: %s; consuming again in %.1f s", self._name, error, delay_s
                )
                await asyncio.sleep(delay_s)

    def _consumer(self) -> AIOKafkaConsumer:
        session_timeout_ms = int(self.settings.session_timeout_s * 1000)
        return AIOKafkaConsumer(
            bootstrap_servers=list(self.settings.bootstrap_servers),
            group_id=self.settings.group_id,
            client_id=f"tidings-{self._name}",
            enable_auto_commit=False,
            auto_offset_reset=self.settings.auto_offset_reset,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=session_timeout_ms // HEARTBEATS_PER_SESSION,
        )

    def retry_backoff(self) -> Backoff:
        """A fresh run of retry delays (after a broker or Kafka failure)."""
        return Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S, uniform=self._uniform)


# aiokafka ships no type information: its classes are Any to mypy.
class _Consumption(ConsumerRebalanceListener):  # type: ignore[misc]
    """One consumer's life in the group: its batches, its commits and its rebalances."""

    def __init__(
        self, source: KafkaSource, publisher: SourcePublisher, consumer: AIOKafkaConsumer
    ) -> None:
        self._source = source
        self._name = source.name
        self._mapping = source.settings.mapping
        self._publisher = publisher
        self._consumer = consumer
        self._owned: frozenset[TopicPartition] = frozenset()
        self._generation = 0
        # Partition -> the offset to commit: every record before it is stored (or skipped).
        self._stored: dict[TopicPartition, int] = {}
        # Held while a batch is published and while offsets are committed.
        self._lock = asyncio.Lock()

    async def run(self, on_running: Callable[[], None]) -> None:
        """Consume until cancelled or Kafka fails (``KafkaError``); commit what was stored
        on the way out."""
        self._consumer.subscribe(topics=list(self._source.settings.topics), listener=self)
        try:
            await self._consumer.start()
            on_running()
            while True:
                batch = await self._consumer.getmany(
                    timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_BATCH_RECORDS
                )
                if batch:
                    await self._publish_batch(batch)
        finally:
            # Cancelled or failed: what was stored is committed, or published again (with
            # the same keys) by whoever consumes the partition next.
            await self._commit_in_time(self._owned)
            await self._consumer.stop()

    # -- the rebalance listener (called by aiokafka's coordinator task) ---------------------

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Stop publishing the partitions, commit what was stored of them, forget them."""
        revoking, self._owned = self._owned, frozenset()
        self._generation += 1
        if revoking:
            logger.info("kafka source %s: handing over %s", self._name, _partitions(revoking))
        await self._commit_in_time(revoking)
        self._stored.clear()  # committed or not, they may be another node's now

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Own these partitions from now on (the consumer resumes at their commits)."""
        self._owned = frozenset(assigned)
        self._generation += 1
        logger.info("kafka source %s: consuming %s", self._name, _partitions(self._owned))

    # -- publishing and committing -----------------------------------------------------------

    async def _publish_batch(self, batch: Mapping[TopicPartition, list[ConsumerRecord]]) -> None:
        async with self._lock:
            generation = self._generation
            async with asyncio.TaskGroup() as group:
                for tp, records in batch.items():
                    group.create_task(self._publish_partition(tp, records, generation))
            await self._commit_owned()

    async def _publish_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord], generation: int
    ) -> None:
        for consumed in records:
            if generation != self._generation or tp not in self._owned:
                return  # revoked: the rest is the new owner's (or read again from the commit)
            record = _record(consumed)
            if not await self._publish_record(record, generation):
                return
            self._stored[tp] = record.offset + 1

    async def _publish_record(self, record: KafkaRecord, generation: int) -> bool:
        """Publish (or skip) one record; ``False`` if its partition was revoked before a
        broker failure could be overcome."""
        mapped = self._mapping.map(record)
        if isinstance(mapped, Skip):
            self._skip(record, mapped)
            return True
        return await self._publish_mapped(record, mapped, generation)

    async def _publish_mapped(self, record: KafkaRecord, mapped: Mapped, generation: int) -> bool:
        backoff = self._source.retry_backoff()
        key = record_key(record)
        while True:
            try:
                await self._publisher.publish(mapped.channel, mapped.data, key=key)
            except SourceRowRefused as refused:
                self._skip(record, Skip(refused.reason, str(refused)))
                return True
            except BrokerError as error:
                if generation != self._generation:
                    return False  # no longer ours: the next owner publishes it, same key
                delay_s = backoff.next_delay_s()
                logger.warning(
                    "kafka source %s: publishing %s failed (%s); again in %.1f s",
                    self._name,
                    key,
                    error,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                continue
            return True  # the publisher counts it (new publications only)

    def _skip(self, record: KafkaRecord, skip: Skip) -> None:
        logger.warning(
            "kafka source %s: skipped the record at %s[%d] offset %d: %s",
            self._name,
            record.topic,
            record.partition,
            record.offset,
            skip.detail,
        )
        count_skipped(self._name, skip.reason)

    async def _commit_in_time(self, partitions: frozenset[TopicPartition]) -> None:
        """Commit what was stored of ``partitions`` once the batch in progress is done
        (its tasks stop at their next record), giving up after ``COMMIT_TIMEOUT_S``."""
        try:
            async with asyncio.timeout(COMMIT_TIMEOUT_S), self._lock:
                await self._commit(
                    {tp: offset for tp, offset in self._stored.items() if tp in partitions}
                )
        except TimeoutError:
            logger.warning(
                "kafka source %s: offsets not committed within %.0f s; their records will "
                "be published again, with the same keys",
                self._name,
                COMMIT_TIMEOUT_S,
            )

    async def _commit_owned(self) -> None:
        """Commit what was stored of the partitions this consumer still owns."""
        offsets = {tp: offset for tp, offset in self._stored.items() if tp in self._owned}
        if await self._commit(offsets):
            for tp, offset in offsets.items():
                if self._stored.get(tp) == offset:
                    del self._stored[tp]

    async def _commit(self, offsets: dict[TopicPartition, int]) -> bool:
        if not offsets:
            return True
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError) as error:
            # The group moved on: the records are read again by their next owner and
            # published with the same keys, so nothing repeats in a channel.
            logger.info("kafka source %s: offsets not committed: %s", self._name, error)
        except KafkaError as error:
            logger.warning("kafka source %s: offsets not committed: %s", self._name, error)
            return False
        return True


def _partitions(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions)) or "nothing"


def _record(consumed: ConsumerRecord) -> KafkaRecord:
    """The parts of an aiokafka ``ConsumerRecord`` the mapping reads."""
    return KafkaRecord(
        topic=consumed.topic,
        partition=consumed.partition,
        offset=consumed.offset,
        key=consumed.key,
        value=consumed.value,
        headers=tuple(consumed.headers),
    )
