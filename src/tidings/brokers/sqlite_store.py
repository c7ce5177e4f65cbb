"""The SQLite file of the ``sqlite`` broker: its schema, the SQL, loads and batched writes.

Everything here is blocking and runs in the broker's one writer thread (``sqlite_writer``;
the group commit is ``sqlite_commit``, the in-memory channels ``sqlite``), never on the
event loop. The file holds, per channel, its epoch and head offset (``channels``, rows
never deleted), its retained publications (``publications``) and the idempotency keys
still inside the dedupe window (``dedupe_keys``); ``meta`` holds the database's epoch and
the *unsynced* mark of a ``"fast"`` session (see "Durability" in ``sqlite``): a file found
marked at open moves every channel to a new epoch.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from tidings.brokers.data_dir import prepare_private_file
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions, RememberedKey, dedupe_key
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Publication
from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1

Durability = Literal["full", "fast"]
DURABILITIES: Final[tuple[Durability, ...]] = ("full", "fast")
# The ``meta`` row that is "1" while a fast session has the file open (see the docstring).
_UNSYNCED: Final = "unsynced"


@dataclass(frozen=True, slots=True)
class StoredChannel:
    """What the file holds of one channel."""

    epoch: str
    head_offset: int
    retained: tuple[Publication, ...]
    # (key, offset, ts) of keyed publications older than ``retained``, oldest first.
    earlier_keys: tuple[tuple[str, int, int], ...]


class SqliteStore:
    """The database file: schema, loads and batched writes. Used only by the writer thread."""

    def __init__(self, file: Path, namespaces: Namespaces, dedupe: DedupeOptions) -> None:
        self._file = file
        self._namespaces = namespaces
        self._dedupe = dedupe
        self._db: sqlite3.Connection | None = None
        self._unsynced = False  # this session marked the file unsynced

    def open(self, new_epoch: str, durability: Durability) -> tuple[str, bool]:
        """Open (creating if needed) the file; return the database's epoch, and whether
        it is a new one because a fast session had not closed the file cleanly."""
        prepare_private_file(self._file)  # 0700 directory, 0600 files
        db = sqlite3.connect(self._file, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # The unsynced mark below must be on disk before any publication is.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("BEGIN IMMEDIATE")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            elif version != SCHEMA_VERSION:
                raise BrokerError(
                    f"{self._file} has schema version {version}; "
                    f"this tidings reads version {SCHEMA_VERSION}"
                )
            db.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('epoch', ?)", (new_epoch,))
            renewed = _meta(db, _UNSYNCED) == "1"
            if renewed:
                # Acknowledged publications may be lost: never give their positions again.
                db.execute("UPDATE channels SET epoch = ?", (new_epoch,))
                db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", (new_epoch,))
            _set_meta(db, _UNSYNCED, "1" if durability == "fast" else "0")
            epoch = _meta(db, "epoch")
            assert epoch is not None, "inserted above"
            db.execute("COMMIT")
            # Into the main file too: a power loss may take the WAL of a fast session,
            # but never what a checkpoint wrote (and synced) before it.
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            if durability == "fast":
                db.execute("PRAGMA synchronous=NORMAL")
                self._unsynced = True
        except BaseException:
            db.close()
            raise
        self._db = db
        return epoch, renewed

    def close(self) -> None:
        """Clear the unsynced mark (durably) and close the file; idempotent."""
        db = self._db
        if db is not None:
            self._db = None
            try:
                if self._unsynced:
                    db.execute("PRAGMA synchronous=FULL")
                    _set_meta(db, _UNSYNCED, "0")
            except sqlite3.Error as exc:  # the mark stays: the next open renews epochs, safely
                logger.warning("clearing the unsynced mark of %s failed: %s", self._file, exc)
            finally:
                db.close()

    def _connection(self) -> sqlite3.Connection:
        assert self._db is not None, "the store is used only while open"
        return self._db

    def load(self, channel: ChannelName, now_ms: int) -> StoredChannel | None:
        """Read ``channel``'s epoch, head, retained publications and recent keys."""
        db = self._connection()
        row = db.execute(
            "SELECT epoch, head_offset FROM channels WHERE name = ?", (channel,)
        ).fetchone()
        if row is None:
            return None
        epoch, head = row
        size = self._namespaces.options_for(channel).history.size
        rows = db.execute(_SELECT_RETAINED, (channel, head - size, head)).fetchall()
        retained = _consecutive_tail([_publication(channel, epoch, row) for row in rows], head)
        first_retained = retained[0].offset if retained else head + 1
        keys = db.execute(
            _SELECT_EARLIER_KEYS,
            (channel, first_retained, now_ms - self._dedupe.window_ms, self._dedupe.max_keys),
        ).fetchall()
        return StoredChannel(epoch, head, retained, tuple(reversed(keys)))

    def write(self, publications: Sequence[Publication], now_ms: int) -> None:
        """Store ``publications``, move their channels' heads and trim, in one transaction."""
        heads: dict[ChannelName, Publication] = {}
        for publication in publications:
            heads[publication.channel] = publication
        sizes = {c: self._namespaces.options_for(c).history for c in heads}
        with self._transaction() as db:
            db.executemany(
                _INSERT_PUBLICATION,
                [_row(p) for p in publications if sizes[p.channel].size > 0],
            )
            db.executemany(
                _INSERT_KEY,
                [
                    (p.channel, p.offset, dedupe_key(p.key, p.info), p.ts)
                    for p in publications
                    if p.key is not None
                ],
            )
            db.executemany(_UPSERT_CHANNEL, [(c, p.epoch, p.offset) for c, p in heads.items()])
            db.executemany(
                _TRIM_PUBLICATIONS,
                [
                    (c, p.offset - sizes[c].size + 1, now_ms - sizes[c].ttl_ms)
                    for c, p in heads.items()
                ],
            )
            db.execute(_EXPIRE_KEYS, (now_ms - self._dedupe.window_ms,))

    def restart(
        self, channel: ChannelName, epoch: str, head_offset: int, *, keep_keys: bool
    ) -> None:
        """Replace ``channel``'s state by an empty history at ``epoch``:``head_offset``,
        in one transaction (a channel adopted from another node: ``SqliteBroker.adopt``);
        its dedupe keys stay if ``keep_keys`` (a restart in the epoch they are of)."""
        with self._transaction() as db:
            db.execute("DELETE FROM publications WHERE channel = ?", (channel,))
            if not keep_keys:
                db.execute("DELETE FROM dedupe_keys WHERE channel = ?", (channel,))
            db.execute(_RESTART_CHANNEL, (channel, epoch, head_offset))

    def renew_all(self, epoch: str) -> None:
        """Restart every channel empty at ``epoch``:0, which becomes the database's epoch
        (that of channels made from now on), in one transaction: publications and keys
        gone, rows kept (``SqliteBroker.start_new_epoch``)."""
        with self._transaction() as db:
            db.execute("DELETE FROM publications")
            db.execute("DELETE FROM dedupe_keys")
            db.execute("UPDATE channels SET epoch = ?, head_offset = 0", (epoch,))
            db.execute("UPDATE meta SET value = ? WHERE name = 'epoch'", (epoch,))

    def renew(self, epochs: Sequence[tuple[ChannelName, str]]) -> None:
        """Restart each ``(channel, epoch)`` empty at ``epoch``:0, publications and keys
        gone, in one transaction (``SqliteBroker.restart_channels``)."""
        with self._transaction() as db:
            names = [(channel,) for channel, _ in epochs]
            db.executemany("DELETE FROM publications WHERE channel = ?", names)
            db.executemany("DELETE FROM dedupe_keys WHERE channel = ?", names)
            db.executemany(_RESTART_CHANNEL, [(channel, epoch, 0) for channel, epoch in epochs])

    def remember_keys(self, channel: ChannelName, keys: Sequence[RememberedKey]) -> None:
        """Store ``keys`` of ``channel`` handed over from another node, in one
        transaction; a key already stored at its offset stays as it is."""
        with self._transaction() as db:
            db.executemany(
                _INSERT_KEY_UNLESS_STORED, [(channel, k.offset, k.key, k.ts) for k in keys]
            )

    def channel_names(self) -> list[ChannelName]:
        """Return the name of every channel in the file."""
        rows = self._connection().execute("SELECT name FROM channels").fetchall()
        return [ChannelName(name) for (name,) in rows]

    def trim(self, heads: Sequence[tuple[ChannelName, int]], now_ms: int) -> None:
        """Delete the rows of channels whose history expired up to their head, and the
        dedupe keys past the window, in one transaction (the sweep of idle channels)."""
        with self._transaction() as db:
            # Up to the head the sweep saw: a publication made since has a higher offset.
            db.executemany(_DELETE_PUBLICATIONS_UP_TO, heads)
            db.execute(_EXPIRE_KEYS, (now_ms - self._dedupe.window_ms,))

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Run the block in one write transaction: committed if it returns, rolled back
        if it raises (the caller's publications are then answered with the error)."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise


def _meta(db: sqlite3.Connection, name: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def _set_meta(db: sqlite3.Connection, name: str, value: str) -> None:
    db.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))


_SCHEMA: Final = (
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
    """CREATE TABLE channels (
        name TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        head_offset INTEGER NOT NULL
    ) WITHOUT ROWID""",
    # A rowid table: data may be large, which WITHOUT ROWID tables handle poorly.
    """CREATE TABLE publications (
        channel TEXT NOT NULL,
        "offset" INTEGER NOT NULL,
        data BLOB NOT NULL,
        ts INTEGER NOT NULL,
        key TEXT,
        info_client TEXT,
        info_user TEXT,
        PRIMARY KEY (channel, "offset")
    )""",
    # Every keyed publication's key, kept for the dedupe window even once the publication
    # itself is trimmed from history.
    """CREATE TABLE dedupe_keys (
        channel TEXT NOT NULL,
        "offset" INTEGER NOT NULL,
        key TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (channel, "offset")
    ) WITHOUT ROWID""",
    "CREATE INDEX dedupe_keys_by_ts ON dedupe_keys (ts)",
)

_SELECT_RETAINED: Final = """
    SELECT "offset", data, ts, key, info_client, info_user FROM publications
    WHERE channel = ? AND "offset" > ? AND "offset" <= ? ORDER BY "offset"
"""
_SELECT_EARLIER_KEYS: Final = """
    SELECT key, "offset", ts FROM dedupe_keys
    WHERE channel = ? AND "offset" < ? AND ts >= ? ORDER BY "offset" DESC LIMIT ?
"""
# Plain INSERT: an offset stored twice is a bug (or a second broker on the file), and
# failing the transaction is the safe answer.
_INSERT_PUBLICATION: Final = """
    INSERT INTO publications (channel, "offset", data, ts, key, info_client, info_user)
    VALUES (?, ?, ?, ?, ?, ?, ?)
"""
_INSERT_KEY: Final = 'INSERT INTO dedupe_keys (channel, "offset", key, ts) VALUES (?, ?, ?, ?)'
_INSERT_KEY_UNLESS_STORED: Final = (
    'INSERT OR IGNORE INTO dedupe_keys (channel, "offset", key, ts) VALUES (?, ?, ?, ?)'
)
_UPSERT_CHANNEL: Final = """
    INSERT INTO channels (name, epoch, head_offset) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET head_offset = excluded.head_offset
"""
# Evict from the front, as ChannelHistory does: everything before the first offset kept
# by size (?2) and before the first publication young enough for the ttl (?3). The
# subquery walks from the oldest row, so it costs what it evicts.
_TRIM_PUBLICATIONS: Final = """
    DELETE FROM publications WHERE channel = ?1 AND "offset" < MAX(?2, COALESCE(
        (SELECT "offset" FROM publications WHERE channel = ?1 AND ts >= ?3
         ORDER BY "offset" LIMIT 1), ?2))
"""
_RESTART_CHANNEL: Final = """
    INSERT INTO channels (name, epoch, head_offset) VALUES (?, ?, ?)
    ON CONFLICT (name) DO UPDATE SET epoch = excluded.epoch, head_offset = excluded.head_offset
"""
_EXPIRE_KEYS: Final = "DELETE FROM dedupe_keys WHERE ts < ?"
_DELETE_PUBLICATIONS_UP_TO: Final = 'DELETE FROM publications WHERE channel = ? AND "offset" <= ?'


def _row(publication: Publication) -> tuple[object, ...]:
    info = publication.info
    return (
        publication.channel,
        publication.offset,
        publication.data,
        publication.ts,
        publication.key,
        None if info is None else info.client,
        None if info is None else info.user,
    )


_PublicationRow = tuple[int, bytes, int, str | None, str | None, str | None]


def _publication(channel: ChannelName, epoch: str, row: _PublicationRow) -> Publication:
    offset, data, ts, key, client, user = row
    info = None if client is None or user is None else ClientInfo(client, user)
    return Publication(channel, epoch, offset, data, ts, key, info)


def _consecutive_tail(publications: list[Publication], head: int) -> tuple[Publication, ...]:
    """Keep the run of consecutive offsets that ends at ``head``: history must be
    gap-free, so a row missing from the file ends what can be replayed."""
    start = len(publications)
    expected = head
    while start > 0 and publications[start - 1].offset == expected:
        start -= 1
        expected -= 1
    return tuple(publications[start:])
