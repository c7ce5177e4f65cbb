"""The chat demo on PostgreSQL: messages kept as rows of a table, published by a source.

Network I/O with PostgreSQL (psycopg 3, psycopg-pool). **Demo only.** With
``tidings serve --demo --broker postgres://...`` the demo plays the classic
architecture: the chat service saves each message in its own database, then the update
reaches the endpoint servers. Its backend (``POST /demo/publish``) inserts a row into
``<schema>_demo.messages`` (``tidings_demo.messages`` with the broker's default schema)
and answers with the row's id; a table source (``table``, as any ``[[sources]]`` table
would configure it) publishes each new row in ``room:<room>``, whoever inserted it (the
demo, or another service writing SQL).

* **Setting up.** ``DemoMessages.open`` creates the schema, the table and the trigger
  that wakes the source (``tidings sources install-trigger`` would install the same),
  under an advisory lock so that two nodes starting at once do not race. A table made
  anew also forgets a cursor the source saved for an older table of that name (a schema
  dropped and made again would otherwise hide its first rows).
* **Writing.** Each insert takes one advisory lock in its transaction, so ids commit in
  the order they were given (the table source's rule, docs/sources.md), and carries the
  page's idempotency key: ``UNIQUE (room, key)`` stores a retried message once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from tidings.brokers.postgres_target import PostgresTarget
from tidings.errors import ConfigError
from tidings.server.settings import Settings
from tidings.sources.registry import SourceSettings
from tidings.sources.table_db import CURSOR_TABLE, lock_key, quote_identifier

if TYPE_CHECKING:
    from psycopg_pool import AsyncConnectionPool

POSTGRES_SCHEMES: Final = ("postgres://", "postgresql://")
DEMO_SCHEMA_SUFFIX: Final = "_demo"
TABLE_NAME: Final = "messages"
# A message row's columns that become the publication's data (the page shows author
# and text; id and created_at show that a row is what was published).
PUBLISHED_COLUMNS: Final = ("id", "author", "text", "created_at")
MAX_TEXT_CHARS: Final = 2000
# Longer source names would make the trigger's identifiers run past PostgreSQL's 63.
_MAX_READABLE_SCHEMA: Final = 30
_CONNECT_TIMEOUT_S: Final = 5
_POOL_SIZE: Final = 4


@dataclass(frozen=True, slots=True)
class DemoTable:
    """Where the demo keeps its messages, and the source that publishes them."""

    conninfo: str  # libpq's URL, without the broker's own settings
    schema: str  # the demo's schema: the broker's, with ``_demo`` appended
    source_name: str

    @property
    def table(self) -> str:
        """``schema.messages``."""
        return f"{self.schema}.{TABLE_NAME}"

    def source_settings(self) -> SourceSettings:
        """The table source that publishes the demo's rows, as ``[[sources]]`` would say."""
        return SourceSettings(
            name=self.source_name,
            kind="table",
            options={
                "dsn": self.conninfo,
                "table": self.table,
                "channel": "room:{room}",
                "columns": list(PUBLISHED_COLUMNS),
            },
        )


def demo_table_of(settings: Settings) -> DemoTable | None:
    """Return the demo's table when the node's broker is PostgreSQL, else ``None`` (the
    demo then publishes through the broker directly, as on every other broker).

    Raises:
        ConfigError: a bad broker setting (the broker itself would refuse it too).
    """
    url = settings.broker
    if url is None or not url.lower().startswith(POSTGRES_SCHEMES):
        return None
    target = PostgresTarget.parse(url, settings.brokers.get("postgres"))
    schema = f"{target.schema}{DEMO_SCHEMA_SUFFIX}"
    # The source's name keys its lock, cursor and NOTIFY channel database-wide: one per
    # broker schema, so two deployments on one database keep two demos apart.
    if len(target.schema) <= _MAX_READABLE_SCHEMA:
        name = f"demo_{target.schema}"
    else:
        name = f"demo_{hashlib.sha256(target.schema.encode()).hexdigest()[:16]}"
    return DemoTable(target.conninfo, schema, name)


class DemoMessages:
    """The demo's messages table: made at start, written by the demo's backend."""

    def __init__(self, table: DemoTable) -> None:
        self.table = table
        # Imported here: only a demo on PostgreSQL needs the driver.
        import psycopg  # noqa: PLC0415

        # What the database's failures raise (the pool's time-out is a psycopg.Error).
        self.errors: tuple[type[Exception], ...] = (psycopg.Error, OSError)
        # Made by each ``open``: a closed pool cannot be opened again.
        self._pool: AsyncConnectionPool | None = None
        schema = quote_identifier(table.schema)
        self._table_sql = f"{schema}.{quote_identifier(TABLE_NAME)}"
        self._write_lock = lock_key(f"{table.source_name}:writers")

    async def open(self) -> None:
        """Create the schema, the table and its trigger if missing; open the pool.

        Raises:
            ConfigError: PostgreSQL cannot be reached, or refuses the statements.
        """
        import psycopg  # noqa: PLC0415
        from psycopg_pool import AsyncConnectionPool  # noqa: PLC0415

        from tidings.sources.table_postgres import trigger_sql  # noqa: PLC0415

        table = self.table
        try:
            async with await psycopg.AsyncConnection.connect(
                table.conninfo, connect_timeout=_CONNECT_TIMEOUT_S
            ) as conn:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_lock,))
                cursor = await conn.execute("SELECT to_regclass(%s) IS NULL", (table.table,))
                found = await cursor.fetchone()
                if found is not None and found[0]:
                    await conn.execute(self._create_sql().encode())
                    await conn.execute(trigger_sql(table.source_name, table.table).encode())
                    forgotten = await conn.execute(
                        "SELECT to_regclass(%s) IS NOT NULL", (CURSOR_TABLE,)
                    )
                    exists = await forgotten.fetchone()
                    if exists is not None and exists[0]:
                        await conn.execute(
                            f"DELETE FROM {CURSOR_TABLE} WHERE source = %s".encode(),
                            (table.source_name,),
                        )
                await conn.commit()
            self._pool = AsyncConnectionPool(
                table.conninfo,
                min_size=1,
                max_size=_POOL_SIZE,
                open=False,
                kwargs={"connect_timeout": _CONNECT_TIMEOUT_S},
            )
            await self._pool.open(wait=True, timeout=_CONNECT_TIMEOUT_S)
        except (psycopg.Error, OSError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"demo: cannot set up its table {table.table}: {first}") from None

    def _create_sql(self) -> str:
        return (
            f"CREATE SCHEMA IF NOT EXISTS {quote_identifier(self.table.schema)};\n"
            f"CREATE TABLE {self._table_sql} (\n"
            "  id bigserial PRIMARY KEY,\n"
            "  room text NOT NULL,\n"
            "  author text NOT NULL,\n"
            "  text text NOT NULL,\n"
            "  key text,\n"
            "  created_at timestamptz NOT NULL DEFAULT now(),\n"
            "  UNIQUE (room, key)\n"
            ");\n"
        )

    async def close(self) -> None:
        """Close the pool, if open."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def insert(self, room: str, author: str, text: str, key: str | None) -> tuple[int, bool]:
        """Save a message; return its row's id and whether ``key`` was already saved in
        ``room`` (then nothing new is written).

        Raises:
            psycopg.Error, OSError: PostgreSQL failed (nothing, or the whole row, saved).
        """
        if self._pool is None:
            raise RuntimeError("the demo's messages table is not open")
        async with self._pool.connection() as conn, conn.transaction():
            # One writer at a time: ids then commit in order, as the source needs.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_lock,))
            cursor = await conn.execute(
                f"INSERT INTO {self._table_sql} (room, author, text, key) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (room, key) DO NOTHING RETURNING id".encode(),
                (room, author, text, key),
            )
            inserted = await cursor.fetchone()
            if inserted is not None:
                return int(inserted[0]), False
            cursor = await conn.execute(
                f"SELECT id FROM {self._table_sql} WHERE room = %s AND key = %s".encode(),
                (room, key),
            )
            existing = await cursor.fetchone()
            assert existing is not None, "a conflict means the key's row exists"
            return int(existing[0]), True
