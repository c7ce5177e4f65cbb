"""The table source: each new row of an application's table becomes a publication.

Database I/O through a ``table_db.TableDatabase`` (PostgreSQL or SQLite). Theory of
operation:

* **Reading.** ``SELECT * FROM <table> WHERE <cursor> > :last ORDER BY <cursor> LIMIT
  <batch>``: the cursor column must be an integer that only grows (an ``id``). Each row
  is published in the channel its ``channel`` template names (``room:{room_id}``), its
  ``columns`` (all by default) as a JSON object, with the idempotency key
  ``source:<name>:<cursor value>``: each channel's rows one after the other, in cursor
  order, and the channels of a batch concurrently.
* **The cursor** is kept in the source's own database (``tidings_source_cursors``), saved
  after the publications of each batch are acknowledged by the broker. A crash between a
  publish and the save makes the next run read those rows again; their keys are then
  still in the broker's dedupe window, so each is stored once. That needs the broker to
  keep keys across the crash (sqlite, redis, postgres; the memory broker loses them with
  the node anyway) and the restart (or another node's takeover) to come within
  ``dedupe_window`` of the publish.
* **Waking up.** After a batch shorter than ``batch``, the source waits for a NOTIFY of
  the trigger ``tidings sources install-trigger`` installs (PostgreSQL), or
  ``poll_interval`` at most.
* **One node at a time.** A source runs only on the node holding its lock (a PostgreSQL
  advisory lock on the session that reads, or a file lock beside an SQLite database);
  the others try again every ``poll_interval``, and one of them takes over when the
  holder dies.
* **Bad rows** (a NULL in a template column, a channel name that is not valid, data past
  the namespace's ``max_data_size``) are skipped, logged with their cursor value and
  counted: the cursor moves past them, so none stalls the source. A broker failure is
  retried with the same key, with backoff, and the cursor waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Self

import msgspec

from tidings.core.backoff import Backoff
from tidings.core.channel import ChannelName
from tidings.errors import BrokerError, ConfigError
from tidings.server.units import parse_duration_s
from tidings.sources.base import (
    SKIP_INVALID_DATA,
    SKIP_NULL_COLUMN,
    SourcePublisher,
    SourceRowRefused,
    count_skipped,
)
from tidings.sources.registry import SourceMissingExtra
from tidings.sources.table_db import Relation, Row, TableDatabase
from tidings.sources.table_sqlite import SQLITE_PREFIX, SqliteTableDatabase, sqlite_path
from tidings.sources.template import ChannelTemplate

logger = logging.getLogger(__name__)

DEFAULT_BATCH: Final = 500
MAX_BATCH: Final = 10_000
DEFAULT_POLL_INTERVAL_S: Final = 1.0
RETRY_BASE_S: Final = 0.1
RETRY_CAP_S: Final = 10.0
POSTGRES_PREFIXES: Final = ("postgres://", "postgresql://")
SETTINGS: Final = (
    "dsn",
    "table",
    "select",
    "cursor",
    "channel",
    "columns",
    "batch",
    "poll_interval",
)

DatabaseFactory = Callable[[], TableDatabase]


@dataclass(frozen=True, slots=True)
class TableSettings:
    """A table source's settings, checked (``TableSource.from_settings``)."""

    name: str
    dsn: str
    relation: Relation
    channel: ChannelTemplate
    columns: tuple[str, ...] | None  # None: every column
    batch: int = DEFAULT_BATCH
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S

    @property
    def is_postgres(self) -> bool:
        """Whether the database is PostgreSQL (else SQLite)."""
        return self.dsn.startswith(POSTGRES_PREFIXES)


def parse_table_settings(name: str, table: Mapping[str, object]) -> TableSettings:
    """Check a table source's ``[[sources]]`` table (``name`` and ``kind`` removed).

    Raises:
        ConfigError: one line naming the setting and what is accepted.
    """
    where = f"sources.{name}"
    unknown = sorted(set(table) - set(SETTINGS))
    if unknown:
        raise ConfigError(f"{where} has unknown settings {unknown}; known: {list(SETTINGS)}")
    dsn = _text(f"{where}.dsn", table.get("dsn"))
    if dsn.startswith(SQLITE_PREFIX):
        sqlite_path(f"{where}.dsn", dsn)
    elif not dsn.startswith(POSTGRES_PREFIXES):
        raise ConfigError(
            f"{where}.dsn must be postgres://user@host/db or sqlite:///path.db, got {dsn!r}"
        )
    has_table, has_select = "table" in table, "select" in table
    if has_table == has_select:
        raise ConfigError(f"{where} needs either table or select (one of them)")
    relation = Relation(
        source=name,
        table=_text(f"{where}.table", table["table"]) if has_table else None,
        select=_text(f"{where}.select", table["select"]) if has_select else None,
        cursor=_text(f"{where}.cursor", table.get("cursor", "id")),
    )
    columns = None
    if "columns" in table:
        value = table["columns"]
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(column, str) and column for column in value)
        ):
            raise ConfigError(
                f'{where}.columns must be a list of column names such as ["id", "body"]'
            )
        columns = tuple(value)
    batch = table.get("batch", DEFAULT_BATCH)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= MAX_BATCH:
        raise ConfigError(
            f"{where}.batch must be a whole number from 1 to {MAX_BATCH}, got {batch!r}"
        )
    poll_interval_s = parse_duration_s(
        f"{where}.poll_interval", table.get("poll_interval", DEFAULT_POLL_INTERVAL_S)
    )
    if not poll_interval_s > 0:
        raise ConfigError(f"{where}.poll_interval must be more than 0")
    return TableSettings(
        name=name,
        dsn=dsn,
        relation=relation,
        channel=ChannelTemplate.parse(
            f"{where}.channel", _text(f"{where}.channel", table.get("channel"))
        ),
        columns=columns,
        batch=batch,
        poll_interval_s=poll_interval_s,
    )


def _text(setting: str, value: object) -> str:
    if value is None:
        raise ConfigError(f"{setting} is required")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{setting} must be a non-empty string, got {value!r}")
    return value


def database_factory(settings: TableSettings) -> DatabaseFactory:
    """Return what opens sessions with the settings' database (psycopg imported here).

    Raises:
        SourceMissingExtra: a PostgreSQL DSN without psycopg installed.
    """
    if settings.is_postgres:
        try:
            from tidings.sources.table_postgres import PostgresTableDatabase  # noqa: PLC0415
        except ImportError as exc:
            if exc.name is None or not exc.name.startswith("psycopg"):
                raise
            raise SourceMissingExtra(settings.name, "table", "postgres", "psycopg") from None
        return lambda: PostgresTableDatabase(settings.dsn, settings.relation)
    path = sqlite_path(f"sources.{settings.name}.dsn", settings.dsn)
    return lambda: SqliteTableDatabase(path, settings.relation)


class TableSource:
    """A source of new rows of one table (see the module docstring)."""

    def __init__(self, settings: TableSettings, open_database: DatabaseFactory) -> None:
        self.settings = settings
        self._open_database = open_database

    @classmethod
    def from_settings(cls, name: str, table: Mapping[str, object]) -> Self:
        """Make the source ``name`` of its ``[[sources]]`` table (no I/O).

        Raises:
            ConfigError: a bad setting, or psycopg missing for a PostgreSQL DSN.
        """
        settings = parse_table_settings(name, table)
        return cls(settings, database_factory(settings))

    @property
    def name(self) -> str:
        """The source's name."""
        return self.settings.name

    async def check(self) -> None:
        """Check that the database answers and has the relation and every column named.

        Raises:
            ConfigError: one line naming what is missing or unreachable.
        """
        settings = self.settings
        db = self._open_database()
        try:
            try:
                await db.connect()
            except db.errors as exc:
                raise ConfigError(
                    f"source {self.name!r}: cannot connect to its database: {first_line(exc)}"
                ) from None
            names = await db.column_names()
            wanted = [(settings.relation.cursor, "cursor")]
            wanted += [(field, "channel") for field in settings.channel.fields]
            wanted += [(column, "columns") for column in settings.columns or ()]
            for column, setting in wanted:
                if column not in names:
                    raise ConfigError(
                        f"source {self.name!r}: column {column!r} (in {setting}) is not in "
                        f"{settings.relation.described}; its columns: {', '.join(names)}"
                    )
            if await db.cursor_is_integer() is False:
                raise ConfigError(
                    f"source {self.name!r}: cursor column {settings.relation.cursor!r} must "
                    "hold integers that only grow (such as an id)"
                )
        finally:
            await db.close()

    async def run(self, publisher: SourcePublisher) -> None:
        """Publish new rows until cancelled: connect, take the lock, follow the table;
        on a database failure, close and start over after a backoff."""
        backoff = Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S, uniform=random.uniform)
        while True:
            db = self._open_database()
            delay_s = 0.0
            try:
                await db.connect()
                await self._take_lock(db)
                await db.prepare()
                last = await db.load_cursor()
                logger.info(
                    "source %s: reading %s after cursor %s",
                    self.name,
                    self.settings.relation.described,
                    last,
                )
                backoff.reset()
                await self._follow(db, publisher, last)
            except db.errors as exc:
                delay_s = backoff.next_delay_s()
                logger.warning(
                    "source %s: database failed (%s); connecting again in %.1f s",
                    self.name,
                    first_line(exc),
                    delay_s,
                )
            finally:
                await asyncio.shield(db.close())
            await asyncio.sleep(delay_s)

    async def _take_lock(self, db: TableDatabase) -> None:
        told = False
        while not await db.try_lock():
            if not told:
                logger.info("source %s runs on another node; taking over if it stops", self.name)
                told = True
            await asyncio.sleep(self.settings.poll_interval_s)
        if told:
            logger.info("source %s: took over", self.name)

    async def _follow(
        self, db: TableDatabase, publisher: SourcePublisher, last: int | None
    ) -> None:
        settings = self.settings
        while True:
            rows = await db.read_after(last, settings.batch)
            if rows:
                last = await self._publish_batch(rows, publisher)
                await db.save_cursor(last)  # after the broker acknowledged every row
            if len(rows) < settings.batch:
                await db.wait(settings.poll_interval_s)

    async def _publish_batch(self, rows: list[Row], publisher: SourcePublisher) -> int:
        """Publish a batch of rows, or skip them; return the batch's last cursor value.

        Each channel's rows are published one after the other, in cursor order; the
        channels of a batch are published concurrently, so that a broker's round trip
        is waited for once per channel and batch, not once per row.
        """
        chains: dict[str, list[tuple[int, bytes]]] = {}
        value = 0
        for row in rows:
            value = _cursor_value(self.name, self.settings.relation.cursor, row)
            publication = self._publication_of(row, value)
            if publication is not None:
                channel, data = publication
                chains.setdefault(channel, []).append((value, data))
        async with asyncio.TaskGroup() as group:
            for channel, chain in chains.items():
                group.create_task(self._publish_chain(ChannelName(channel), chain, publisher))
        return value

    def _publication_of(self, row: Row, value: int) -> tuple[str, bytes] | None:
        """Return the channel and data of ``row``, or skip it (logged, counted)."""
        settings = self.settings
        channel = settings.channel.render(row)
        if channel is None:
            nulls = [field for field in settings.channel.fields if row.get(field) is None]
            self._skip(value, SKIP_NULL_COLUMN, f"channel column {', '.join(nulls)} is NULL")
            return None
        shown = row if settings.columns is None else {c: row[c] for c in settings.columns}
        try:
            return channel, msgspec.json.encode(shown)
        except (TypeError, ValueError, msgspec.EncodeError) as exc:
            self._skip(value, SKIP_INVALID_DATA, f"its columns are not JSON data: {exc}")
            return None

    async def _publish_chain(
        self, channel: ChannelName, chain: list[tuple[int, bytes]], publisher: SourcePublisher
    ) -> None:
        """Publish one channel's rows in order; a row refused for good is skipped, a
        broker failure retried with the same key (the rows after it wait)."""
        backoff = Backoff(base_s=RETRY_BASE_S, cap_s=RETRY_CAP_S, uniform=random.uniform)
        for value, data in chain:
            key = f"source:{self.name}:{value}"
            while True:
                try:
                    await publisher.publish(channel, data, key=key)
                except SourceRowRefused as exc:
                    self._skip(value, exc.reason, exc.message)
                except BrokerError as exc:
                    delay_s = backoff.next_delay_s()
                    logger.warning(
                        "source %s: publishing row %s failed (%s); retrying in %.1f s",
                        self.name,
                        value,
                        exc,
                        delay_s,
                    )
                    await asyncio.sleep(delay_s)
                    continue
                backoff.reset()
                break

    def _skip(self, value: int, reason: str, why: str) -> None:
        cursor = self.settings.relation.cursor
        logger.warning("source %s: row %s=%s skipped: %s", self.name, cursor, value, why)
        count_skipped(self.name, reason)


def _cursor_value(source: str, cursor: str, row: Row) -> int:
    value = row.get(cursor)
    if isinstance(value, bool) or not isinstance(value, int):
        # Not a row's fault but the configuration's: no later row could be read either.
        raise ConfigError(
            f"source {source!r}: cursor column {cursor!r} holds {value!r}; it must hold "
            "integers that only grow (such as an id)"
        )
    return value


def first_line(error: BaseException) -> str:
    """Return the first line of ``error``'s message (a driver's can run to several)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@dataclass(frozen=True, slots=True)
class TriggerInstall:
    """The SQL that makes inserts wake a table source, and where to run it."""

    sql: str
    dsn: str
    shown_dsn: str  # without its password

    async def run(self) -> None:
        """Run the SQL in one transaction."""
        from tidings.sources.table_postgres import run_sql  # noqa: PLC0415

        await run_sql(self.dsn, self.sql)


def trigger_install(source: TableSource) -> TriggerInstall:
    """Return the trigger ``source`` would be woken by (``tidings sources install-trigger``).

    Raises:
        ConfigError: the source reads SQLite (which has no notifications: it polls) or a
            ``select`` (a trigger needs the table).
    """
    settings = source.settings
    if not settings.is_postgres:
        raise ConfigError(
            f"source {source.name!r} reads SQLite, which cannot notify other processes: "
            "it polls every poll_interval"
        )
    table = settings.relation.table
    if table is None:
        raise ConfigError(
            f"source {source.name!r} reads a select: install a trigger on the table it "
            "reads yourself, or set table instead"
        )
    from tidings.sources.table_postgres import trigger_sql, without_password  # noqa: PLC0415

    return TriggerInstall(
        trigger_sql(source.name, table), settings.dsn, without_password(settings.dsn)
    )
