"""The table source's SQLite session (stdlib ``sqlite3``, run in a worker thread).

Disk I/O, never on the event loop: every call runs in the session's own thread, one
after the other, so that closing (even when the source is cancelled mid-read) waits for
the statement in progress instead of closing the connection under it. The lock that
lets one node run the source is an exclusive ``flock`` on a file beside the database
(``<database>.tidings-source-<name>.lock``): the OS releases it when the holding
process dies, however it dies, so another process on the machine takes the source over
at its next try. SQLite has no notifications between processes, so the source polls
(``poll_interval``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import os
import sqlite3
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Final, TypeVar

from tidings.errors import ConfigError
from tidings.sources.table_db import CURSOR_TABLE, Relation, Row, quote_identifier, relation_sql

T = TypeVar("T")

SQLITE_PREFIX: Final = "sqlite:///"
BUSY_TIMEOUT_S: Final = 10.0
_CREATE_CURSOR_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {CURSOR_TABLE} ("
    "source TEXT PRIMARY KEY, cursor_value INTEGER NOT NULL, updated_at TEXT NOT NULL)"
)
_SAVE_CURSOR: Final = (
    f"INSERT INTO {CURSOR_TABLE} (source, cursor_value, updated_at) "
    "VALUES (?, ?, strftime('%Y-%m-%dT%H:%M:%fZ')) ON CONFLICT (source) DO UPDATE SET "
    "cursor_value = excluded.cursor_value, updated_at = excluded.updated_at"
)


def sqlite_path(setting: str, dsn: str) -> Path:
    """Return the database file of ``sqlite:///relative/path`` or ``sqlite:////absolute``.

    Raises:
        ConfigError: no path.
    """
    path = dsn[len(SQLITE_PREFIX) :]
    if not dsn.startswith(SQLITE_PREFIX) or not path:
        raise ConfigError(
            f"{setting} must be sqlite:///relative/path.db or sqlite:////absolute/path.db, "
            f"got {dsn!r}"
        )
    return Path(path)


class SqliteTableDatabase:
    """A ``table_db.TableDatabase`` on an SQLite file."""

    # What the database's failures raise: the source reconnects after them.
    errors: tuple[type[Exception], ...] = (sqlite3.Error, OSError)

    def __init__(self, path: Path, relation: Relation) -> None:
        self._path = path
        self._relation = relation
        self._db: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, "tidings-source-sqlite")

    async def _call(self, function: Callable[[], T]) -> T:
        """Run ``function`` in the session's thread, after every call before it."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, function)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the source's database session is not open")
        return self._db

    async def connect(self) -> None:
        """See ``TableDatabase.connect``."""
        if not self._path.is_file():
            raise ConfigError(
                f"source {self._relation.source!r}: database file {str(self._path)!r} "
                "does not exist"
            )
        self._db = await self._call(
            partial(
                sqlite3.connect,
                self._path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # autocommit: each statement is its own transaction
                check_same_thread=False,  # opened in the session's thread, closed by it too
            )
        )

    async def close(self) -> None:
        """See ``TableDatabase.close``: closes the database and releases the lock."""
        db, self._db = self._db, None
        if db is not None:
            await self._call(db.close)  # after the statement in progress, if any
        self._thread.shutdown(wait=False)  # a session is not opened again
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # releases the flock

    async def column_names(self) -> list[str]:
        """See ``TableDatabase.column_names``."""
        query = f"SELECT * FROM {relation_sql(self._relation)} LIMIT 0"
        try:
            cursor = await self._call(partial(self._connection().execute, query))
        except sqlite3.OperationalError as exc:
            reason = str(exc)
            if reason.startswith("no such table"):
                raise ConfigError(
                    f"source {self._relation.source!r}: {self._relation.described} does not "
                    f"exist in {str(self._path)!r}"
                ) from None
            raise ConfigError(
                f"source {self._relation.source!r}: {self._relation.described} fails: {reason}"
            ) from None
        return [column[0] for column in cursor.description or ()]

    async def cursor_is_integer(self) -> bool | None:
        """See ``TableDatabase.cursor_is_integer``: SQLite's columns have no fixed type."""
        return None

    async def try_lock(self) -> bool:
        """See ``TableDatabase.try_lock``."""
        if self._lock_fd is not None:
            return True
        lock_path = self._path.with_name(
            f"{self._path.name}.tidings-source-{self._relation.source}.lock"
        )
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    async def prepare(self) -> None:
        """See ``TableDatabase.prepare`` (no listening: SQLite is polled)."""
        await self._call(partial(self._connection().execute, _CREATE_CURSOR_TABLE))

    async def load_cursor(self) -> int | None:
        """See ``TableDatabase.load_cursor``."""
        query = f"SELECT cursor_value FROM {CURSOR_TABLE} WHERE source = ?"

        def load() -> int | None:
            row = self._connection().execute(query, (self._relation.source,)).fetchone()
            return None if row is None else int(row[0])

        return await self._call(load)

    async def save_cursor(self, value: int) -> None:
        """See ``TableDatabase.save_cursor`` (autocommit: committed on return)."""
        await self._call(
            partial(self._connection().execute, _SAVE_CURSOR, (self._relation.source, value))
        )

    async def read_after(self, last: int | None, limit: int) -> list[Row]:
        """See ``TableDatabase.read_after``."""
        column = quote_identifier(self._relation.cursor)
        where = "" if last is None else f"WHERE {column} > :last "
        query = (
            f"SELECT * FROM {relation_sql(self._relation)} {where}ORDER BY {column} LIMIT :limit"
        )

        def read() -> list[Row]:
            cursor = self._connection().execute(query, {"last": last, "limit": limit})
            names = [column[0] for column in cursor.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        return await self._call(read)

    async def wait(self, timeout_s: float) -> None:
        """See ``TableDatabase.wait``: nothing wakes an SQLite source but time."""
        await asyncio.sleep(timeout_s)
