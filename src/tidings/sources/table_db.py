"""What the table source asks of a database, whichever it is (PostgreSQL, SQLite).

No I/O here: the protocol each database module implements, the shape of the query both
run (``Relation``), and the cursor table they keep. A ``TableDatabase`` is one session
with the application's database, used by one task at a time: it holds the source's
lock (only one node runs a source), reads rows after the cursor, and saves the cursor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final, Protocol

# The table tidings creates in the source's database: one row per source, its cursor.
CURSOR_TABLE: Final = "tidings_source_cursors"
# Rows of the relation, as the source reads them: column name -> value.
Row = dict[str, object]


@dataclass(frozen=True, slots=True)
class Relation:
    """What a source reads: a table (``schema.table`` or ``table``), or a ``select``,
    ordered by its ``cursor`` column."""

    source: str
    table: str | None
    select: str | None
    cursor: str

    @property
    def described(self) -> str:
        """The relation as error messages name it."""
        return f"table {self.table!r}" if self.table is not None else "the select"


def quote_identifier(name: str) -> str:
    """Return ``name`` as one SQL identifier, exactly as given (the same in PostgreSQL
    and SQLite: double quotes, a double quote doubled)."""
    return '"' + name.replace('"', '""') + '"'


def quote_table(name: str) -> str:
    """Return ``schema.table`` or ``table`` as quoted identifiers."""
    return ".".join(quote_identifier(part) for part in name.split("."))


def relation_sql(relation: Relation) -> str:
    """The ``FROM`` part: the quoted table, or the select as a subquery."""
    if relation.table is not None:
        return quote_table(relation.table)
    assert relation.select is not None
    return f"({relation.select}) AS tidings_source_rows"


def notify_channel(source: str) -> str:
    """The LISTEN/NOTIFY channel that wakes source ``source`` (PostgreSQL)."""
    return f"tidings_source_{source}"


def lock_key(source: str) -> int:
    """A stable 64-bit key of ``source`` (PostgreSQL advisory locks take a bigint)."""
    digest = hashlib.sha256(f"tidings-source:{source}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class TableDatabase(Protocol):
    """One session with the source's database (see the module docstring)."""

    # What the database's failures raise (a lost connection, a failed statement).
    errors: tuple[type[Exception], ...]

    async def connect(self) -> None:
        """Open the session.

        Raises:
            OSError or the driver's error: the database cannot be reached.
        """
        ...

    async def close(self) -> None:
        """Close the session (which releases the lock); idempotent."""
        ...

    async def column_names(self) -> list[str]:
        """Return the relation's columns.

        Raises:
            ConfigError: the table does not exist, or the select fails.
        """
        ...

    async def cursor_is_integer(self) -> bool | None:
        """Whether the cursor column holds integers (``None``: the database cannot tell)."""
        ...

    async def try_lock(self) -> bool:
        """Take the source's lock if no other session holds it; return whether held."""
        ...

    async def prepare(self) -> None:
        """Create the cursor table if missing, and start listening for wake-ups."""
        ...

    async def load_cursor(self) -> int | None:
        """Return the saved cursor, or ``None`` if the source never saved one."""
        ...

    async def save_cursor(self, value: int) -> None:
        """Save the cursor durably (committed before this returns)."""
        ...

    async def read_after(self, last: int | None, limit: int) -> list[Row]:
        """Return up to ``limit`` rows whose cursor is above ``last`` (all rows if
        ``None``), in cursor order."""
        ...

    async def wait(self, timeout_s: float) -> None:
        """Return when woken (a NOTIFY since the last read) or after ``timeout_s``."""
        ...
