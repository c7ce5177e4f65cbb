"""The table source in a node (in-process), against the machine's PostgreSQL and an
SQLite file: rows become publications in cursor order, once, with the cursor saved in
the application's database; bad rows are skipped and counted; a missing table or
column fails the check; one node at a time runs a source."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Final

import msgspec
import pytest

from tests.sources.conftest import AppDatabase
from tidings.brokers.base import PublishResult
from tidings.core.channel import ChannelName
from tidings.core.namespace import NamespaceOptions, default_namespaces
from tidings.core.publication import Position
from tidings.core.recovery import Replay
from tidings.errors import BrokerError, ConfigError
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.sources.registry import SourceSettings, create_source

DEADLINE_S: Final = 10.0
POLL_INTERVAL: Final = "50ms"


def source_settings(db: AppDatabase, **options: object) -> SourceSettings:
    """The table source reading ``db``'s table into ``room:{room_id}``."""
    table: dict[str, object] = {
        "dsn": db.dsn,
        "table": db.table,
        "channel": "room:{room_id}",
        "poll_interval": POLL_INTERVAL,
        "batch": 7,  # several batches, and batches cut short
    }
    table.update(options)
    return SourceSettings(db.table, "table", table)


def node_settings(*sources: SourceSettings, max_data_bytes: int = 65_536) -> Settings:
    namespaces = default_namespaces()
    namespaces[next(iter(namespaces))] = NamespaceOptions(max_data_bytes=max_data_bytes)
    return Settings(sources=sources, namespaces=namespaces)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[TidingsApp]:
    app = TidingsApp(settings)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def published(app: TidingsApp, channel: str) -> list[dict[str, object]]:
    """The data of every publication in ``channel`` on ``app``'s broker, in offset order."""
    read = await app.hub.history(ChannelName(channel), None, None)
    assert isinstance(read.recovery, Replay)
    return [msgspec.json.decode(p.data) for p in read.recovery.publications]


async def eventually(check: Callable[[], object], what: str) -> None:
    """Wait until ``check()`` (awaited if a coroutine) is true, or fail after the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def ids(rows: list[dict[str, object]]) -> list[object]:
    return [row["id"] for row in rows]


async def test_rows_are_published_in_cursor_order_once_across_restarts(
    app_db: AppDatabase,
) -> None:
    first = app_db.insert([(1, f"m{n}") for n in range(20)] + [(2, "other room")])
    settings = node_settings(source_settings(app_db))
    async with running(settings) as app:

        async def all_first() -> bool:
            return len(await published(app, "room:1")) == 20

        await eventually(all_first, "the first 20 rows")
        assert ids(await published(app, "room:1")) == first[:20]
        assert await published(app, "room:2") == [
            {"id": first[20], "room_id": 2, "body": "other room"}
        ]
        await eventually(lambda: app_db.saved_cursor() == first[-1], "the saved cursor")
        later = app_db.insert([(1, "while running")])
        await eventually(all_first_plus(app, later), "a row inserted while running")
    # A node started again reads after the saved cursor: nothing is published twice.
    after_restart = app_db.insert([(1, "after restart")])
    async with running(settings) as app:
        await eventually(all_first_plus(app, after_restart, count=1), "the row after restart")
        assert ids(await published(app, "room:1")) == after_restart
        assert await published(app, "room:2") == []


def all_first_plus(
    app: TidingsApp, wanted: list[int], count: int | None = None
) -> Callable[[], object]:
    async def check() -> bool:
        got = ids(await published(app, "room:1"))
        return got[-len(wanted) :] == wanted and (count is None or len(got) == count)

    return check


async def test_columns_choose_the_data_and_select_reads_a_query(app_db: AppDatabase) -> None:
    rows = app_db.insert([(3, "hello"), (4, "skipped by the select")])
    select = f"SELECT id, room_id, upper(body) AS loud FROM {app_db.table} WHERE room_id = 3"
    source = source_settings(app_db, columns=["loud"])
    del source.options["table"]  # type: ignore[attr-defined]  # a plain dict, built above
    source.options["select"] = select  # type: ignore[index]
    async with running(node_settings(source)) as app:

        async def arrived() -> bool:
            return await published(app, "room:3") != []

        await eventually(arrived, "the selected row")
        assert await published(app, "room:3") == [{"loud": "HELLO"}]
        await eventually(lambda: app_db.saved_cursor() == rows[0], "the cursor")
        assert await published(app, "room:4") == []


async def test_bad_rows_are_skipped_logged_and_counted(
    app_db: AppDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    settings = node_settings(source_settings(app_db, channel="room:{body}"), max_data_bytes=100)
    rows = app_db.insert(
        [
            (1, "fine"),
            (1, None),  # type: ignore[list-item]  # NULL in the template's column
            (1, "not a channel!"),  # "!" is not allowed in a channel name
            (1, "x" * 200),  # over max_data_size
            (1, "fine2"),
        ]
    )
    async with running(settings) as app:

        async def last_arrived() -> bool:
            return await published(app, "room:fine2") != []

        await eventually(last_arrived, "the row after the bad ones")
        assert ids(await published(app, "room:fine")) == [rows[0]]
        exposition = app.metrics.exposition().decode()
    name = app_db.table
    for reason in ("null_column", "invalid_channel", "too_large"):
        line = f'tidings_source_skipped_total{{reason="{reason}",source="{name}"}} 1.0'
        assert line in exposition
    assert f'tidings_source_published_total{{source="{name}"}} 2.0' in exposition
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [f"id={row}" in line for line, row in zip(skipped, rows[1:4], strict=True)] == [True] * 3


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"table": "no_such_table"}, "'no_such_table' does not exist"),
        ({"cursor": "seq"}, "column 'seq' (in cursor)"),
        ({"channel": "room:{room}"}, "column 'room' (in channel)"),
        ({"columns": ["body", "author"]}, "column 'author' (in columns)"),
    ],
)
async def test_check_names_what_is_missing(
    app_db: AppDatabase, options: Mapping[str, object], named: str
) -> None:
    source = create_source(source_settings(app_db, **options))
    with pytest.raises(ConfigError, match=r"^source '[a-z0-9_]+': ") as caught:
        await source.check()
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_a_node_with_a_missing_table_does_not_start(postgres_db: AppDatabase) -> None:
    app = TidingsApp(node_settings(source_settings(postgres_db, table="no_such_table")))
    with pytest.raises(ConfigError, match="does not exist"):
        await app.start()


async def test_only_the_lock_holder_publishes_and_another_node_takes_over(
    app_db: AppDatabase,
) -> None:
    settings = node_settings(source_settings(app_db))
    first = app_db.insert([(1, "first")])
    holder = TidingsApp(settings)
    await holder.start()
    try:
        await eventually(lambda: app_db.saved_cursor() == first[0], "the holder's cursor")
        async with running(settings) as waiting:
            # With both nodes up, a new row is the holder's alone to publish.
            second = app_db.insert([(1, "second")])
            await eventually(lambda: app_db.saved_cursor() == second[0], "the holder's cursor")
            assert ids(await published(holder, "room:1")) == first + second
            assert await published(waiting, "room:1") == []
            await holder.stop()  # its session ends, and the lock with it
            third = app_db.insert([(1, "third")])
            await eventually(all_first_plus(waiting, third, count=1), "the row after takeover")
    finally:
        await holder.stop()


class FlakyPublisher:
    """A ``SourcePublisher`` whose broker fails the first ``failures`` publishes."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.keys: list[str] = []  # every attempt's key, failed or not
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        self.keys.append(key)
        if self.failures:
            self.failures -= 1
            raise BrokerError("the broker is down")
        self.published.append((channel, data))
        return PublishResult(Position("e", len(self.published)))


async def test_a_broker_failure_is_retried_with_the_same_key_before_moving_on(
    sqlite_db: AppDatabase,
) -> None:
    rows = sqlite_db.insert([(1, "a"), (1, "b")])
    source = create_source(source_settings(sqlite_db))
    publisher = FlakyPublisher(failures=3)
    task = asyncio.create_task(source.run(publisher))
    try:
        await eventually(lambda: sqlite_db.saved_cursor() == rows[1], "the cursor")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    name = sqlite_db.table
    assert publisher.keys == [f"source:{name}:{rows[0]}"] * 4 + [f"source:{name}:{rows[1]}"]
    assert [msgspec.json.decode(data)["body"] for _, data in publisher.published] == ["a", "b"]
