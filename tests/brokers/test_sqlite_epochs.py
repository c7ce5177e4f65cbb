"""The sqlite broker restarting channels in new epochs (``RenewingStore``): what a ring
node does with channels another node sequenced meanwhile. Restarted channels lose their
history and keys and start at offset 0 of a new epoch, in the file (a reopened broker
does not bring the old epoch back); the others keep theirs; and from the call on, no
publish or read is served from the stale copy, even before the file is written."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.support.handler import RecordingHandler
from tidings.brokers.base import RenewingStore
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.sqlite import DB_FILE_NAME, SqliteBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.publication import Position
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.errors import BrokerError

ROOM = ChannelName("room:1")
OTHER = ChannelName("room:2")
NEW = ChannelName("room:new")


def epochs() -> Iterator[str]:
    """E1 (the file's epoch), then E2, E3...: the epochs a broker draws, in order."""
    n = 0
    while True:
        n += 1
        yield f"E{n}"


@contextlib.asynccontextmanager
async def running(directory: Path, drawn: Iterator[str]) -> AsyncIterator[SqliteBroker]:
    broker = SqliteBroker(directory, Namespaces(), epoch_factory=lambda: next(drawn))
    await broker.start(RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


def rows(directory: Path, table: str, channel: ChannelName) -> int:
    """How many rows of ``table`` the file holds for ``channel`` (read on its own)."""
    with contextlib.closing(sqlite3.connect(directory / DB_FILE_NAME)) as db:
        count = db.execute(f"SELECT COUNT(*) FROM {table} WHERE channel = ?", (channel,))
        return int(count.fetchone()[0])


async def publish_keyed(broker: SqliteBroker, channel: ChannelName, count: int) -> Position:
    last = None
    for n in range(count):
        last = await broker.publish(channel, b"%d" % n, key=f"{channel}-{n}")
    assert last is not None
    return last.position


def test_both_embedded_brokers_are_renewing_stores(tmp_path: Path) -> None:
    assert isinstance(MemoryBroker(Namespaces()), RenewingStore)
    assert isinstance(SqliteBroker(tmp_path, Namespaces()), RenewingStore)


async def test_a_new_epoch_for_all_drops_history_and_keys_and_outlives_the_process(
    tmp_path: Path,
) -> None:
    drawn = epochs()
    async with running(tmp_path, drawn) as broker:
        room = await publish_keyed(broker, ROOM, 3)
        other = await publish_keyed(broker, OTHER, 2)
        await broker.start_new_epoch()
        renewed = [await broker.history(ROOM, room), await broker.history(OTHER, other)]
        again = await broker.publish(ROOM, b"again", key=f"{ROOM}-0")
    assert (room.epoch, other.epoch) == ("E1", "E1")
    assert [read.head for read in renewed] == [Position("E2", 0), Position("E2", 0)]
    assert [read.recovery for read in renewed] == [Gap(GapReason.EPOCH_CHANGED)] * 2
    assert (again.position, again.duplicate) == (Position("E2", 1), False)  # key forgotten

    async with running(tmp_path, drawn) as reopened:
        after = await reopened.history(ROOM, room)
        fresh = await reopened.history(NEW)  # a channel made now takes the new epoch too
        later = await reopened.publish(OTHER, b"later")
    assert after.head == Position("E2", 1)
    assert after.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert fresh.head == Position("E2", 0)
    assert later.position == Position("E2", 1)
    assert (rows(tmp_path, "publications", OTHER), rows(tmp_path, "dedupe_keys", OTHER)) == (1, 0)


async def test_restarting_some_channels_gives_each_its_own_epoch_and_leaves_the_rest(
    tmp_path: Path,
) -> None:
    drawn = epochs()
    async with running(tmp_path, drawn) as broker:
        room = await publish_keyed(broker, ROOM, 3)
        kept = await publish_keyed(broker, OTHER, 2)
        third = await publish_keyed(broker, NEW, 1)
        restarted = await broker.restart_channels(lambda channel: channel != OTHER)
        room_read = await broker.history(ROOM, room)
        third_read = await broker.history(NEW, third)
    assert restarted == 2
    assert {room_read.head, third_read.head} == {Position("E2", 0), Position("E3", 0)}
    assert room_read.recovery == third_read.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert (rows(tmp_path, "publications", ROOM), rows(tmp_path, "dedupe_keys", ROOM)) == (0, 0)
    assert (rows(tmp_path, "publications", OTHER), rows(tmp_path, "dedupe_keys", OTHER)) == (2, 2)

    async with running(tmp_path, drawn) as reopened:
        room_after = await reopened.history(ROOM, room)
        other_after = await reopened.history(OTHER, Position("E1", 1))
        duplicate = await reopened.publish(OTHER, b"again", key=f"{OTHER}-1")
        unknown = await reopened.history(ChannelName("room:unknown"))
    assert room_after == room_read  # in the file: not back to E1
    assert other_after.head == kept
    assert isinstance(other_after.recovery, Replay)
    assert [p.offset for p in other_after.recovery.publications] == [2]
    assert (duplicate.position, duplicate.duplicate) == (kept, True)  # its keys stayed
    assert unknown.head == Position("E1", 0)  # the database's epoch did not change


async def test_a_publish_and_a_read_made_as_the_restart_begins_see_the_new_epoch(
    tmp_path: Path,
) -> None:
    # The writer thread is held, as a slow disk would: the restart cannot be written
    # yet, and ROOM is loaded in memory, where a publish would sequence at once.
    drawn = epochs()
    async with running(tmp_path, drawn) as broker:
        room = await publish_keyed(broker, ROOM, 2)
        held = threading.Event()
        assert broker._writer is not None
        blocked = broker._writer.submit(held.wait)
        restarting = broker.restart_channels(lambda channel: channel == ROOM)
        publishing = asyncio.ensure_future(broker.publish(ROOM, b"next"))
        reading = asyncio.ensure_future(broker.history(ROOM, room))
        held.set()
        await blocked
        assert await restarting == 1
        published, read = await publishing, await reading
    assert published.position == Position("E2", 1)  # not (E1, 3) of the stale copy
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)


async def test_a_load_under_way_as_the_restart_begins_is_not_installed(tmp_path: Path) -> None:
    drawn = epochs()
    async with running(tmp_path, drawn) as broker:
        room = await publish_keyed(broker, ROOM, 2)
    async with running(tmp_path, drawn) as broker:
        held = threading.Event()
        assert broker._writer is not None
        blocked = broker._writer.submit(held.wait)
        reading = asyncio.ensure_future(broker.history(ROOM, room))
        # Step the loop until the read has queued its load (behind the held job): there
        # is no event for that, and the load must be queued before the restart.
        while ROOM not in broker._loading:  # noqa: ASYNC110
            await asyncio.sleep(0)
        restarting = broker.restart_channels(lambda channel: channel == ROOM)
        held.set()
        await blocked
        assert await restarting == 1
        read = await reading
        published = await broker.publish(ROOM, b"next")
    # E2 was drawn, and not used, by the second open: the file had its epoch.
    assert read.head == Position("E3", 0)
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert published.position == Position("E3", 1)


async def test_a_publication_pending_as_the_restart_begins_is_committed_in_the_old_epoch(
    tmp_path: Path,
) -> None:
    drawn = epochs()
    async with running(tmp_path, drawn) as broker:
        await publish_keyed(broker, ROOM, 1)
        pending = asyncio.ensure_future(broker.publish(ROOM, b"pending"))
        while not broker._group_commit.pending():  # noqa: ASYNC110  (stepping: no event)
            await asyncio.sleep(0)
        await broker.start_new_epoch()
        answered = await pending
        read = await broker.history(ROOM)
    assert answered.position == Position("E1", 2)  # sequenced before: answered, not lost
    assert read.head == Position("E2", 0)


async def test_restarts_asked_for_back_to_back_run_in_the_order_asked(tmp_path: Path) -> None:
    drawn = epochs()
    async with running(tmp_path, drawn) as broker:
        await publish_keyed(broker, ROOM, 2)
        await publish_keyed(broker, OTHER, 2)
        some = broker.restart_channels(lambda channel: channel == ROOM)
        every = broker.start_new_epoch()
        publishing = asyncio.ensure_future(broker.publish(ROOM, b"after both"))
        assert await some == 1
        await every
        published = [await publishing, await broker.publish(OTHER, b"after both")]
    # ROOM took E2, then every channel took E3 (run at once, the later would be E2).
    assert [p.position for p in published] == [Position("E3", 1), Position("E3", 1)]


async def test_a_restart_of_a_closed_broker_is_refused(tmp_path: Path) -> None:
    async with running(tmp_path, epochs()) as broker:
        pass
    with pytest.raises(BrokerError, match="not open"):
        broker.restart_channels(lambda channel: True)
