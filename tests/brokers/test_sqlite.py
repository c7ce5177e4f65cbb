"""What the sqlite broker adds to the contract: persistence, group commit, trimming."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.clock import FakeClock
from tests.support.handler import RecordingHandler
from tidings.brokers.sqlite import DB_FILE_NAME, Durability, SqliteBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.dedupe import DedupeOptions
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.errors import BrokerError, ConfigError

HOUR_MS = 3_600_000
SMALL_HISTORY = 3
BRIEF_TTL_MS = 1_000
DEDUPE_WINDOW_MS = 60_000

NAMESPACES = Namespaces(
    {
        NamespaceName("room"): NamespaceOptions(history=HistoryOptions(1_000, HOUR_MS)),
        NamespaceName("small"): NamespaceOptions(history=HistoryOptions(SMALL_HISTORY, HOUR_MS)),
        NamespaceName("brief"): NamespaceOptions(history=HistoryOptions(100, BRIEF_TTL_MS)),
        NamespaceName("none"): NamespaceOptions(history=HistoryOptions(0, HOUR_MS)),
    }
)
ROOM = ChannelName("room:1")
SMALL = ChannelName("small:1")
BRIEF = ChannelName("brief:1")
NO_HISTORY = ChannelName("none:1")

SqlRow = tuple[object, ...]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "data"


@contextlib.asynccontextmanager
async def running(
    directory: Path,
    clock: FakeClock,
    handler: RecordingHandler | None = None,
    durability: Durability = "full",
) -> AsyncIterator[SqliteBroker]:
    """Start a broker on ``directory``; close it on the way out (a restart when reused)."""
    broker = SqliteBroker(
        directory,
        NAMESPACES,
        clock=clock,
        dedupe=DedupeOptions(DEDUPE_WINDOW_MS),
        durability=durability,
    )
    await broker.start(handler or RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


def query(directory: Path, sql: str, *params: object) -> list[SqlRow]:
    """Read the file directly, through a connection of its own."""
    with contextlib.closing(sqlite3.connect(directory / DB_FILE_NAME)) as db:
        return db.execute(sql, params).fetchall()


def make_file_of_schema_version(directory: Path, version: int) -> None:
    directory.mkdir(parents=True)
    with contextlib.closing(sqlite3.connect(directory / DB_FILE_NAME)) as db:
        db.execute(f"PRAGMA user_version={version}")


def replayed(read_recovery: object) -> list[Publication]:
    assert isinstance(read_recovery, Replay)
    return list(read_recovery.publications)


def data(n: int) -> bytes:
    return b'{"n":%d}' % n


# Persistence across restarts


async def test_restart_keeps_epoch_head_and_history(directory: Path, clock: FakeClock) -> None:
    info = ClientInfo("c-1", "alice")
    async with running(directory, clock) as broker:
        for n in range(5):
            await broker.publish(ROOM, data(n), key=f"k-{n}", info=info if n % 2 else None)
        before = await broker.history(ROOM)

    async with running(directory, clock) as broker:
        after = await broker.history(ROOM)

    assert after == before
    assert after.head.offset == 5
    assert replayed(after.recovery)[1].info == info


async def test_resume_after_restart_replays_what_was_missed(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        client_position = (await broker.publish(ROOM, data(1))).position
        missed = [await broker.publish(ROOM, data(n)) for n in (2, 3)]

    async with running(directory, clock) as broker:
        read = await broker.history(ROOM, client_position)

    assert [p.position for p in replayed(read.recovery)] == [r.position for r in missed]


async def test_publish_after_restart_continues_at_head_plus_one(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        last = [await broker.publish(ROOM, data(n)) for n in range(3)][-1]

    async with running(directory, clock) as broker:
        result = await broker.publish(ROOM, data(4))

    assert result.position == Position(last.position.epoch, 4)


async def test_repeated_key_after_restart_is_still_a_duplicate(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        original = await broker.publish(ROOM, data(1), key="order-7")

    async with running(directory, clock) as broker:
        repeated = await broker.publish(ROOM, data(2), key="order-7")
        head = (await broker.history(ROOM)).head

    assert repeated.duplicate
    assert repeated.position == original.position
    assert head == original.position


async def test_key_older_than_retained_history_is_still_a_duplicate_after_restart(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        original = await broker.publish(SMALL, data(0), key="order-7")
        for n in range(SMALL_HISTORY + 2):
            await broker.publish(SMALL, data(n + 1))

    async with running(directory, clock) as broker:
        repeated = await broker.publish(SMALL, data(9), key="order-7")

    assert repeated.duplicate
    assert repeated.position == original.position


async def test_key_expired_during_downtime_is_published_again(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        await broker.publish(SMALL, data(0), key="order-7")
        for n in range(SMALL_HISTORY + 2):
            await broker.publish(SMALL, data(n + 1))
    clock.advance(DEDUPE_WINDOW_MS + 1)

    async with running(directory, clock) as broker:
        result = await broker.publish(SMALL, data(9), key="order-7")

    assert not result.duplicate
    assert result.position.offset == SMALL_HISTORY + 4


async def test_head_survives_restart_without_history(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        last = [await broker.publish(NO_HISTORY, data(n)) for n in range(3)][-1]

    async with running(directory, clock) as broker:
        read = await broker.history(NO_HISTORY, Position(last.position.epoch, 1))
        result = await broker.publish(NO_HISTORY, data(4))

    assert read.head == last.position
    assert read.recovery == Gap(GapReason.EVICTED)
    assert result.position.offset == 4
    assert query(directory, "SELECT count(*) FROM publications") == [(0,)]


async def test_lost_directory_means_new_epoch_and_gap(tmp_path: Path, clock: FakeClock) -> None:
    async with running(tmp_path / "before", clock) as broker:
        old = await broker.publish(ROOM, data(1))

    async with running(tmp_path / "after", clock) as broker:
        read = await broker.history(ROOM, old.position)

    assert read.head.epoch != old.position.epoch
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)


async def test_unicode_data_round_trips_byte_exact(directory: Path, clock: FakeClock) -> None:
    text = '{"text":"héllo wörld, 世界 🎉 \\u2028 \u2028 \\"quoted\\""}'.encode()
    async with running(directory, clock) as broker:
        await broker.publish(ROOM, text)

    async with running(directory, clock) as broker:
        read = await broker.history(ROOM)

    assert [p.data for p in replayed(read.recovery)] == [text]
    assert type(replayed(read.recovery)[0].data) is bytes


async def test_reading_unknown_channel_stores_nothing(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        read = await broker.history(ROOM)

    assert read.head.offset == 0
    assert query(directory, "SELECT count(*) FROM channels") == [(0,)]


async def test_start_creates_the_directory(directory: Path, clock: FakeClock) -> None:
    async with running(directory / "nested", clock):
        assert (directory / "nested" / DB_FILE_NAME).is_file()


# Durability and group commit


async def test_published_row_is_committed_when_publish_returns(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        result = await broker.publish(ROOM, data(1))

        # Another connection sees only committed rows.
        rows = query(directory, 'SELECT "offset", data FROM publications WHERE channel = ?', ROOM)

    assert rows == [(result.position.offset, data(1))]


async def test_new_instance_sees_every_returned_publish_without_close(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as crashed:
        results = await asyncio.gather(*(crashed.publish(ROOM, data(n)) for n in range(50)))

        # As after a crash: the first instance never closed before the second read.
        async with running(directory, clock) as restarted:
            read = await restarted.history(ROOM)

    assert [p.position for p in replayed(read.recovery)] == sorted(
        (r.position for r in results), key=lambda position: position.offset
    )


async def test_concurrent_publishes_share_few_transactions(
    directory: Path, clock: FakeClock
) -> None:
    publishes = 1_000
    async with running(directory, clock) as broker:
        results = await asyncio.gather(*(broker.publish(ROOM, data(n)) for n in range(publishes)))
        commits = broker.commits

    assert sorted(r.position.offset for r in results) == list(range(1, publishes + 1))
    assert commits <= publishes // 100
    assert query(directory, "SELECT count(*) FROM publications") == [(publishes,)]


async def test_stored_order_is_offset_order_with_concurrent_publishers(
    directory: Path, clock: FakeClock
) -> None:
    channels = [ChannelName(f"room:{n}") for n in range(3)]
    async with running(directory, clock) as broker:
        for round_ in range(5):
            await asyncio.gather(
                *(broker.publish(c, data(round_ * 10 + i)) for i in range(10) for c in channels)
            )

    for channel in channels:
        rows = query(
            directory,
            'SELECT "offset" FROM publications WHERE channel = ? ORDER BY rowid',
            channel,
        )
        assert [offset for (offset,) in rows] == list(range(1, 51))


async def test_close_commits_pending_publishes(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        await broker.publish(ROOM, data(0))
        results = await asyncio.gather(
            *(broker.publish(ROOM, data(n)) for n in range(1, 20)), broker.close()
        )

    async with running(directory, clock) as broker:
        read = await broker.history(ROOM)

    assert len(results) == 20
    assert read.head.offset == 20


async def test_failed_commit_raises_and_offsets_stay_gap_free(
    directory: Path, clock: FakeClock
) -> None:
    handler = RecordingHandler()
    poison = b'{"poison":true}'
    async with running(directory, clock, handler) as broker:
        await broker.subscribe(ROOM)
        await broker.publish(ROOM, data(1))
        with contextlib.closing(sqlite3.connect(directory / DB_FILE_NAME)) as db:
            db.execute(
                f"CREATE TRIGGER refuse BEFORE INSERT ON publications WHEN NEW.data = "
                f"X'{poison.hex()}' BEGIN SELECT RAISE(ABORT, 'refused'); END"
            )
            db.commit()
            outcomes = await asyncio.gather(
                broker.publish(ROOM, poison, key="k"),
                broker.publish(ROOM, data(2), key="k"),
                return_exceptions=True,
            )
            db.execute("DROP TRIGGER refuse")
            db.commit()
        after = await broker.publish(ROOM, data(3), key="k")
        read = await broker.history(ROOM)

    assert all(isinstance(outcome, BrokerError) for outcome in outcomes)
    assert after.position.offset == 2
    assert not after.duplicate
    assert [p.data for p in replayed(read.recovery)] == [data(1), data(3)]
    assert [p.data for p in handler.publications] == [data(1), data(3)]


# Trimming


async def test_trimming_keeps_rows_within_history_size(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        for n in range(50):
            await broker.publish(SMALL, data(n))
        await asyncio.gather(*(broker.publish(SMALL, data(n)) for n in range(50)))

    rows = query(directory, 'SELECT "offset" FROM publications ORDER BY "offset"')
    assert rows == [(98,), (99,), (100,)]


async def test_trimming_drops_rows_past_their_ttl(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        for n in range(10):
            await broker.publish(BRIEF, data(n))
        clock.advance(BRIEF_TTL_MS + 1)
        await broker.publish(BRIEF, data(10))

    assert query(directory, 'SELECT "offset" FROM publications') == [(11,)]


async def test_trimming_drops_keys_past_the_dedupe_window(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock) as broker:
        for n in range(10):
            await broker.publish(ROOM, data(n), key=f"k-{n}")
        clock.advance(DEDUPE_WINDOW_MS + 1)
        await broker.publish(ROOM, data(10), key="k-10")

    assert query(directory, "SELECT key FROM dedupe_keys") == [("k-10",)]


# Lifecycle


async def test_is_ready_only_while_open(directory: Path, clock: FakeClock) -> None:
    broker = SqliteBroker(directory, NAMESPACES, clock=clock)
    ready_before = await broker.is_ready()
    await broker.start(RecordingHandler())
    ready_open = await broker.is_ready()
    await broker.close()

    assert (ready_before, ready_open, await broker.is_ready()) == (False, True, False)


async def test_not_ready_while_the_writer_thread_is_stuck(
    directory: Path, clock: FakeClock
) -> None:
    broker = SqliteBroker(directory, NAMESPACES, clock=clock)
    await broker.start(RecordingHandler())
    stuck = threading.Event()
    writer = broker._writer  # a job that blocks the thread, as a stalled fsync would
    assert writer is not None
    blocked = writer.submit(stuck.wait)
    try:
        ready_while_stuck = await broker.is_ready()
    finally:
        stuck.set()
    await blocked
    ready_after = await broker.is_ready()
    await broker.close()

    assert (ready_while_stuck, ready_after) == (False, True)


async def test_close_is_idempotent(directory: Path, clock: FakeClock) -> None:
    broker = SqliteBroker(directory, NAMESPACES, clock=clock)
    await broker.start(RecordingHandler())

    await asyncio.gather(broker.close(), broker.close())
    await broker.close()

    assert not await broker.is_ready()


async def test_publish_after_close_raises_broker_error(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        pass

    with pytest.raises(BrokerError, match="not open"):
        await broker.publish(ROOM, data(1))
    with pytest.raises(BrokerError, match="not open"):
        await broker.history(ROOM)


async def test_start_refuses_a_file_of_another_schema_version(
    directory: Path, clock: FakeClock
) -> None:
    make_file_of_schema_version(directory, 99)
    broker = SqliteBroker(directory, NAMESPACES, clock=clock)

    with pytest.raises(BrokerError, match="schema version 99"):
        await broker.start(RecordingHandler())
    assert not await broker.is_ready()


async def test_a_reader_arriving_just_after_a_load_completes_sees_the_loaded_channel(
    tmp_path: Path,
) -> None:
    # Regression: the load's done-callback runs one loop iteration after the load
    # completes; a second caller in that window used to find no channel and read head 0.
    first = SqliteBroker(tmp_path, Namespaces())
    await first.start(lambda publication: None)
    channel = ChannelName("room:race")
    for index in range(3):
        await first.publish(channel, b"%d" % index)
    await first.close()

    second = SqliteBroker(tmp_path, Namespaces())
    await second.start(lambda publication: None)
    try:
        reading = asyncio.ensure_future(second.history(channel))
        # Step the loop one iteration at a time until the load (not yet its callback)
        # is done: stepping is the point, there is no event for that window.
        while channel not in second._loading or not second._loading[channel][1].done():  # noqa: ASYNC110
            await asyncio.sleep(0)
        read = await second.history(channel)
        assert read.head.offset == 3
        published = await second.publish(channel, b"3")
        assert published.position.offset == 4
        assert (await reading).head.offset == 3
    finally:
        await second.close()


# Durability


def lose_power(directory: Path, survivor: Path) -> None:
    """Copy what a power loss under ``durability = "fast"`` leaves of ``directory`` into
    ``survivor``: the main file as the last checkpoint wrote it, not the WAL (written
    but never fsynced in that setting)."""
    survivor.mkdir(parents=True)
    shutil.copyfile(directory / DB_FILE_NAME, survivor / DB_FILE_NAME)


async def test_default_durability_fsyncs_every_commit(directory: Path, clock: FakeClock) -> None:
    async with running(directory, clock) as broker:
        writer = broker._writer  # the broker's own connection, in its thread
        store = broker._store
        assert writer is not None

        def level() -> int:
            connection = store._connection()
            return int(connection.execute("PRAGMA synchronous").fetchone()[0])

        synchronous = await writer.submit(level)
    assert synchronous == 2  # FULL: the WAL is fsynced at every commit, before the answer


async def test_fast_durability_after_a_power_loss_moves_every_channel_to_a_new_epoch(
    tmp_path: Path, clock: FakeClock
) -> None:
    directory, survivor = tmp_path / "data", tmp_path / "survivor"
    async with running(directory, clock, durability="fast") as broker:
        first = await broker.publish(ROOM, data(1))
        other = await broker.publish(SMALL, data(1))
        query(directory, "PRAGMA wal_checkpoint(FULL)")  # as SQLite does every 1,000 pages
        lost = [await broker.publish(ROOM, data(n)) for n in (2, 3)]
        lose_power(directory, survivor)

    async with running(survivor, clock, durability="fast") as restarted:
        from_lost = await restarted.history(ROOM, lost[-1].position)
        from_first = await restarted.history(ROOM, first.position)
        from_other = await restarted.history(SMALL, other.position)
        again = await restarted.publish(ROOM, data(4))
    assert again.position.epoch != first.position.epoch  # offset 2 is never given twice
    assert from_lost.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert from_first.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert from_other.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert from_first.head == Position(again.position.epoch, 1)  # offset 1 kept, renamed


async def test_fast_durability_keeps_epochs_across_a_clean_restart(
    directory: Path, clock: FakeClock
) -> None:
    async with running(directory, clock, durability="fast") as broker:
        result = await broker.publish(ROOM, data(1))
    async with running(directory, clock, durability="fast") as restarted:
        read = await restarted.history(ROOM, result.position)
    assert read.recovery == Replay(())
    assert read.head == result.position


async def test_an_unclean_fast_stop_renews_epochs_even_when_reopened_durable(
    tmp_path: Path, clock: FakeClock
) -> None:
    directory, survivor = tmp_path / "data", tmp_path / "survivor"
    async with running(directory, clock, durability="fast") as broker:
        result = await broker.publish(ROOM, data(1))
        query(directory, "PRAGMA wal_checkpoint(FULL)")
        lose_power(directory, survivor)
    async with running(survivor, clock) as restarted:
        read = await restarted.history(ROOM, result.position)
    async with running(survivor, clock) as again:
        read_again = await again.history(ROOM, read.head)
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert read_again.recovery == Replay(())  # renewed once, not at every open


def test_an_unknown_durability_is_refused(directory: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        SqliteBroker(directory, NAMESPACES, durability="sometimes")  # type: ignore[arg-type]  # the wrong value is the point
