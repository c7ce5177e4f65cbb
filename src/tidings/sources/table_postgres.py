"""The table source's PostgreSQL session (psycopg 3, async, autocommit).

Network I/O with the application's database, on one connection that does everything:
it holds the source's advisory lock (session level, so the lock ends with the
connection: when the node holding it dies, the server drops its connection and another
node takes the lock at its next try), LISTENs for the trigger's NOTIFY, reads rows and
saves the cursor. Because it is one connection, a node that lost the lock (its
connection broke) can neither read nor save a cursor with it: it must connect and take
the lock again first.
"""

from __future__ import annotations

import contextlib
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg.rows import dict_row

from tidings.errors import ConfigError
from tidings.sources.table_db import (
    CURSOR_TABLE,
    Relation,
    Row,
    lock_key,
    notify_channel,
    quote_identifier,
    quote_table,
    relation_sql,
)

CONNECT_TIMEOUT_S: Final = 5
# PostgreSQL's type OIDs of int2, int4, int8.
_INTEGER_TYPES: Final = frozenset({20, 21, 23})
_CREATE_CURSOR_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {CURSOR_TABLE} ("
    "source text PRIMARY KEY, cursor_value bigint NOT NULL, "
    "updated_at timestamptz NOT NULL DEFAULT now())"
)
_SAVE_CURSOR: Final = (
    f"INSERT INTO {CURSOR_TABLE} (source, cursor_value) VALUES (%s, %s) "
    "ON CONFLICT (source) DO UPDATE SET cursor_value = excluded.cursor_value, updated_at = now()"
)


def without_password(dsn: str) -> str:
    """Return ``dsn`` with its password masked, for messages."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def trigger_sql(source: str, table: str) -> str:
    """Return the SQL that makes every insert into ``table`` wake source ``source``: a
    statement-level trigger (one NOTIFY per statement, however many rows) calling a
    function that NOTIFYs the source's channel."""
    function = quote_identifier(f"tidings_source_{source}_notify")
    trigger = quote_identifier(f"tidings_source_{source}")
    channel = notify_channel(source).replace("'", "''")
    return (
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        f"BEGIN\n  PERFORM pg_notify('{channel}', '');\n  RETURN NULL;\nEND $$;\n"
        f"DROP TRIGGER IF EXISTS {trigger} ON {quote_table(table)};\n"
        f"CREATE TRIGGER {trigger} AFTER INSERT ON {quote_table(table)}\n"
        f"  FOR EACH STATEMENT EXECUTE FUNCTION {function}();\n"
    )


async def run_sql(dsn: str, statements: str) -> None:
    """Run ``statements`` in one transaction (``tidings sources install-trigger``)."""
    async with await psycopg.AsyncConnection.connect(
        dsn, connect_timeout=CONNECT_TIMEOUT_S
    ) as conn:
        await conn.execute(statements.encode())
        await conn.commit()


class PostgresTableDatabase:
    """A ``table_db.TableDatabase`` on PostgreSQL."""

    # What the database's failures raise: the source reconnects after them.
    errors: tuple[type[Exception], ...] = (psycopg.Error, OSError)

    def __init__(self, dsn: str, relation: Relation) -> None:
        self._dsn = dsn
        self._relation = relation
        self._conn: psycopg.AsyncConnection[Row] | None = None
        self._description: list[psycopg.Column] | None = None

    def _connection(self) -> psycopg.AsyncConnection[Row]:
        if self._conn is None:
            raise RuntimeError("the source's database session is not open")
        return self._conn

    async def connect(self) -> None:
        """See ``TableDatabase.connect``."""
        self._conn = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, row_factory=dict_row
        )

    async def close(self) -> None:
        """See ``TableDatabase.close``."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    async def _describe(self) -> list[psycopg.Column]:
        if self._description is None:
            query = f"SELECT * FROM {relation_sql(self._relation)} LIMIT 0"
            try:
                cursor = await self._connection().execute(query.encode())
            except psycopg.errors.UndefinedTable:
                raise ConfigError(
                    f"source {self._relation.source!r}: {self._relation.described} does not "
                    f"exist in {without_password(self._dsn)}"
                ) from None
            except (psycopg.errors.SyntaxError, psycopg.errors.UndefinedColumn) as exc:
                first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ConfigError(
                    f"source {self._relation.source!r}: {self._relation.described} fails: "
                    f"{first_line}"
                ) from None
            self._description = list(cursor.description or [])
        return self._description

    async def column_names(self) -> list[str]:
        """See ``TableDatabase.column_names``."""
        return [column.name for column in await self._describe()]

    async def cursor_is_integer(self) -> bool | None:
        """See ``TableDatabase.cursor_is_integer``."""
        for column in await self._describe():
            if column.name == self._relation.cursor:
                return column.type_code in _INTEGER_TYPES
        return None

    async def try_lock(self) -> bool:
        """See ``TableDatabase.try_lock``."""
        cursor = await self._connection().execute(
            "SELECT pg_try_advisory_lock(%s) AS held", (lock_key(self._relation.source),)
        )
        row = await cursor.fetchone()
        return bool(row and row["held"])

    async def prepare(self) -> None:
        """See ``TableDatabase.prepare``."""
        conn = self._connection()
        # Another source's node may create it at the same moment.
        with contextlib.suppress(psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
            await conn.execute(_CREATE_CURSOR_TABLE.encode())
        await conn.execute(
            f"LISTEN {quote_identifier(notify_channel(self._relation.source))}".encode()
        )

    async def load_cursor(self) -> int | None:
        """See ``TableDatabase.load_cursor``."""
        cursor = await self._connection().execute(
            f"SELECT cursor_value FROM {CURSOR_TABLE} WHERE source = %s".encode(),
            (self._relation.source,),
        )
        row = await cursor.fetchone()
        return None if row is None else int(str(row["cursor_value"]))

    async def save_cursor(self, value: int) -> None:
        """See ``TableDatabase.save_cursor`` (autocommit: committed on return)."""
        await self._connection().execute(_SAVE_CURSOR.encode(), (self._relation.source, value))

    async def read_after(self, last: int | None, limit: int) -> list[Row]:
        """See ``TableDatabase.read_after``."""
        # Forget the wake-ups kept so far: this read sees every row their commits made.
        # Only those that arrive while it runs are kept, so they stay bounded by what one
        # batch takes however long a catch-up lasts.
        async for _notify in self._connection().notifies(timeout=0):
            pass
        column = quote_identifier(self._relation.cursor)
        where = "" if last is None else f"WHERE {column} > %(last)s "
        query = (
            f"SELECT * FROM {relation_sql(self._relation)} {where}ORDER BY {column} LIMIT %(limit)s"
        )
        cursor = await self._connection().execute(query.encode(), {"last": last, "limit": limit})
        return await cursor.fetchall()

    async def wait(self, timeout_s: float) -> None:
        """See ``TableDatabase.wait``. psycopg keeps the notifications that arrive while
        the connection does something else (a read, a cursor save) and hands them out
        first here: a NOTIFY during the last read ends this wait at once. The generator
        is run to its end, so it hands out (and forgets) all those kept, not just one."""
        async for _notify in self._connection().notifies(timeout=timeout_s, stop_after=1):
            pass
