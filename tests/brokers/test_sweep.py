"""The sweep of idle channels in the brokers that keep channels in this process's memory
(memory, sqlite): history and idempotency keys expire although nobody touches the
channel again, and a bare channel keeps only its epoch and head, from which it still
resumes exactly (issue #11, item 6). Time is a ``FakeClock``; ``sweep`` is called by the
test, as the broker's timer would."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Final, Protocol

import pytest

from tests.support.clock import FakeClock
from tests.support.handler import RecordingHandler
from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.dedupe import DedupeOptions
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Position
from tidings.core.recovery import Gap, Replay

TTL_MS: Final = 10_000
WINDOW_MS: Final = 20_000
NAMESPACES: Final = Namespaces(
    {NamespaceName("room"): NamespaceOptions(history=HistoryOptions(100, TTL_MS))}
)
ROOM: Final = ChannelName("room:idle")


class SweptBroker(Broker, Protocol):
    async def sweep(self) -> int: ...


def memory(clock: FakeClock, _directory: Path) -> SweptBroker:
    return MemoryBroker(NAMESPACES, clock=clock, dedupe=DedupeOptions(WINDOW_MS))


def sqlite(clock: FakeClock, directory: Path) -> SweptBroker:
    return SqliteBroker(directory, NAMESPACES, clock=clock, dedupe=DedupeOptions(WINDOW_MS))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[memory, sqlite], ids=["memory", "sqlite"])
async def broker(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[SweptBroker]:
    factory: Callable[[FakeClock, Path], SweptBroker] = request.param
    broker = factory(clock, tmp_path)
    await broker.start(RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


async def publish_three(broker: SweptBroker) -> Position:
    """Publish 1..3 in ``ROOM``, the last with key ``k``; return the head."""
    await broker.publish(ROOM, b"1")
    await broker.publish(ROOM, b"2")
    return (await broker.publish(ROOM, b"3", key="k")).position


async def test_a_channel_within_its_history_time_is_not_swept(
    broker: SweptBroker, clock: FakeClock
) -> None:
    head = await publish_three(broker)
    clock.advance(TTL_MS - 1)
    assert await broker.sweep() == 0
    read = await broker.history(ROOM, Position(head.epoch, 0))
    assert isinstance(read.recovery, Replay)
    assert [p.offset for p in read.recovery.publications] == [1, 2, 3]


async def test_a_channel_whose_keys_are_within_the_window_is_not_swept(
    broker: SweptBroker, clock: FakeClock
) -> None:
    await publish_three(broker)
    clock.advance(TTL_MS + 1)  # history expired, the key is not
    assert await broker.sweep() == 0
    assert (await broker.publish(ROOM, b"again", key="k")).duplicate


async def test_a_swept_channel_resumes_at_its_head_recovered_with_nothing(
    broker: SweptBroker, clock: FakeClock
) -> None:
    head = await publish_three(broker)
    clock.advance(WINDOW_MS + 1)
    assert await broker.sweep() == 1
    read = await broker.history(ROOM, head)
    assert read.head == head
    assert read.recovery == Replay(())
    assert (await broker.history(ROOM)).head == head


async def test_a_swept_channel_reports_a_gap_to_a_position_whose_history_expired(
    broker: SweptBroker, clock: FakeClock
) -> None:
    head = await publish_three(broker)
    clock.advance(WINDOW_MS + 1)
    assert await broker.sweep() == 1
    read = await broker.history(ROOM, Position(head.epoch, 1))
    assert isinstance(read.recovery, Gap)
    assert read.head == head


async def test_a_swept_channel_goes_on_from_its_head_and_forgets_expired_keys(
    broker: SweptBroker, clock: FakeClock
) -> None:
    head = await publish_three(broker)
    clock.advance(WINDOW_MS + 1)
    assert await broker.sweep() == 1
    again = await broker.publish(ROOM, b"4", key="k")  # the key's window is over
    assert not again.duplicate
    assert again.position == Position(head.epoch, 4)
    read = await broker.history(ROOM, head)
    assert isinstance(read.recovery, Replay)
    assert [p.offset for p in read.recovery.publications] == [4]


async def test_a_swept_channel_is_swept_once(broker: SweptBroker, clock: FakeClock) -> None:
    await publish_three(broker)
    clock.advance(WINDOW_MS + 1)
    assert await broker.sweep() == 1
    assert await broker.sweep() == 0


async def test_sqlite_sweep_trims_the_expired_rows_from_the_file(
    clock: FakeClock, tmp_path: Path
) -> None:
    broker = sqlite(clock, tmp_path)
    await broker.start(RecordingHandler())
    try:
        head = await publish_three(broker)
        clock.advance(WINDOW_MS + 1)
        assert await broker.sweep() == 1
    finally:
        await broker.close()
    import sqlite3  # noqa: PLC0415  (only this test reads the file itself)

    with sqlite3.connect(tmp_path / "tidings.db") as db:
        rows = db.execute("SELECT COUNT(*) FROM publications").fetchone()[0]
        keys = db.execute("SELECT COUNT(*) FROM dedupe_keys").fetchone()[0]
        channel = db.execute("SELECT epoch, head_offset FROM channels").fetchone()
    assert (rows, keys) == (0, 0)
    assert tuple(channel) == (head.epoch, head.offset)
