"""The application databases the table source tests read: a fresh table in the machine's
PostgreSQL (``test`` database, dropped after the test, with the source's trigger and
cursor row), or a fresh SQLite file; and the "application" that inserts into it."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import psycopg
import pytest

from tests.support.services import require_service

PG_HOST: Final = "127.0.0.1"
PG_PORT: Final = 5432
PG_DSN: Final = f"postgres://postgres@{PG_HOST}:{PG_PORT}/test"
CREATE_POSTGRES: Final = (
    "CREATE TABLE {table} (id bigserial PRIMARY KEY, room_id integer, body text)"
)
CREATE_SQLITE: Final = (
    "CREATE TABLE {table} (id INTEGER PRIMARY KEY AUTOINCREMENT, room_id INTEGER, body TEXT)"
)
# What the application inserts: (room_id, body).
Message = tuple[int | None, str]


@dataclass
class AppDatabase:
    """One application table, and the application writing to it."""

    kind: str
    dsn: str
    table: str  # also the name of the source that reads it

    def insert(self, messages: Sequence[Message]) -> list[int]:
        """Insert ``messages`` in one transaction; return their ids, in order."""
        query = f"INSERT INTO {self.table} (room_id, body) VALUES (?, ?)"
        if self.kind == "postgres":
            with psycopg.connect(self.dsn) as conn:
                returning = f"{query.replace('?', '%s')} RETURNING id"
                return [_first(conn.execute(returning, m).fetchone()) for m in messages]
        with sqlite3.connect(self.sqlite_file, timeout=10) as db:
            return [int(db.execute(query, m).lastrowid or 0) for m in messages]

    @property
    def sqlite_file(self) -> Path:
        """The SQLite database's file."""
        return Path(self.dsn.removeprefix("sqlite:///"))

    def saved_cursor(self) -> int | None:
        """The cursor the source saved, if any."""
        query = "SELECT cursor_value FROM tidings_source_cursors WHERE source = '{}'"
        try:
            if self.kind == "postgres":
                with psycopg.connect(self.dsn) as conn:
                    row = conn.execute(query.format(self.table)).fetchone()
            else:
                with sqlite3.connect(self.sqlite_file, timeout=10) as db:
                    row = db.execute(query.format(self.table)).fetchone()
        except (psycopg.errors.UndefinedTable, sqlite3.OperationalError):
            return None
        return None if row is None else int(row[0])


def _first(row: tuple[object, ...] | None) -> int:
    assert row is not None
    return int(str(row[0]))


def source_name() -> str:
    """A source (and table) name no other test uses."""
    return f"src_test_{secrets.token_hex(4)}"


@pytest.fixture
def postgres_db() -> Iterator[AppDatabase]:
    """A fresh table in the machine's PostgreSQL; dropped afterwards."""
    require_service(PG_HOST, PG_PORT, "PostgreSQL")
    table = source_name()
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(CREATE_POSTGRES.format(table=table))
    try:
        yield AppDatabase("postgres", PG_DSN, table)
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {table}")
            conn.execute(f'DROP FUNCTION IF EXISTS "tidings_source_{table}_notify"()')
            if _has_cursor_table(conn):
                conn.execute("DELETE FROM tidings_source_cursors WHERE source = %s", (table,))


def _has_cursor_table(conn: psycopg.Connection[tuple[object, ...]]) -> bool:
    row = conn.execute("SELECT to_regclass('tidings_source_cursors') IS NOT NULL").fetchone()
    return bool(row and row[0])


@pytest.fixture
def sqlite_db(tmp_path: Path) -> AppDatabase:
    """A fresh SQLite file with the application's table."""
    table = source_name()
    file = tmp_path / "app.db"
    with sqlite3.connect(file) as db:
        db.execute(CREATE_SQLITE.format(table=table))
    return AppDatabase("sqlite", f"sqlite:///{file}", table)


@pytest.fixture(params=["postgres", "sqlite"])
def app_db(request: pytest.FixtureRequest) -> AppDatabase:
    """Each kind of application database in turn."""
    database: AppDatabase = request.getfixturevalue(f"{request.param}_db")
    return database
