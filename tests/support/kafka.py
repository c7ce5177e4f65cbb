"""Kafka clients for tests, against a real broker (``tests.support.tansu``): creating a
topic, producing records, reading a consumer group's committed offsets.

Producers pass ``enable_idempotence=False``: Tansu does not support the idempotent
producer (aiokafka's default since 0.11).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

WAIT_TIMEOUT_S: Final = 30.0
POLL_INTERVAL_S: Final = 0.02


@dataclass(frozen=True, slots=True)
class Produce:
    """One record to produce."""

    value: bytes | None
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes]] = ()
    partition: int | None = None


async def create_topic(bootstrap_servers: str, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, replication_factor=1)])
    finally:
        await admin.close()


async def produce(bootstrap_servers: str, topic: str, records: Iterable[Produce]) -> None:
    """Produce ``records`` to ``topic`` and wait until Kafka has them all."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, enable_idempotence=False)
    await producer.start()
    try:
        sent = [
            await producer.send(
                topic,
                value=record.value,
                key=record.key,
                headers=list(record.headers),
                partition=record.partition,
            )
            for record in records
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()


@asynccontextmanager
async def commit_reader(bootstrap_servers: str, group_id: str) -> AsyncIterator[CommitReader]:
    """Read the offsets ``group_id`` commits, without joining the group."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group_id, enable_auto_commit=False
    )
    await consumer.start()  # not subscribed: reads the group's commits without joining it
    try:
        yield CommitReader(consumer)
    finally:
        await consumer.stop()


class CommitReader:
    """Reads a consumer group's committed offsets."""

    def __init__(self, consumer: AIOKafkaConsumer) -> None:
        self._consumer = consumer

    async def offsets(self, topic: str, partitions: int) -> list[int]:
        """The offset committed in each partition of ``topic`` (0 where none is)."""
        return [
            await self._consumer.committed(TopicPartition(topic, partition)) or 0
            for partition in range(partitions)
        ]

    async def total(self, topic: str, partitions: int) -> int:
        """How many records of ``topic`` (from offset 0) the group committed."""
        return sum(await self.offsets(topic, partitions))


async def wait_until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``WAIT_TIMEOUT_S``."""
    try:
        async with asyncio.timeout(WAIT_TIMEOUT_S):
            while True:
                if await condition():
                    return
                await asyncio.sleep(POLL_INTERVAL_S)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None
