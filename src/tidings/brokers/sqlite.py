"""A single-node broker whose channels survive restarts, stored in one SQLite file.

Does disk I/O, all of it in one dedicated writer thread (stdlib ``sqlite3``), never on
the event loop. Sequencing stays in memory, as in the memory broker: each channel is a
``ChannelLog``, loaded lazily from ``<dir>/tidings.db`` on first touch (epoch, head
offset, the retained publications, the keys still inside the dedupe window), so history
is read from memory. Publications are written to disk in batches (group commit) and a
publish returns only once its row is committed: offsets, epochs, history and
idempotency keys outlive the process, and a client resuming after a restart is given
exactly what it missed. The file itself (schema, SQL, loads and writes) is
``sqlite_store``, the group commit (batches, and what is visible when) ``sqlite_commit``,
the thread doing the disk I/O ``sqlite_writer``, what a ring node's store does beyond
a broker ``sqlite_ring``; this module sequences, reads, sweeps and delivers.

Durability (``durability``). With ``"full"``, the default, SQLite runs
``synchronous=FULL``: each group commit fsyncs the WAL before its publishers are
answered, so an acknowledged publication survives a crash and a power loss. With
``"fast"`` (``synchronous=NORMAL``) the WAL is fsynced only at checkpoints: a power loss
may lose the last acknowledged publications, whose positions the channel would then
give out again for other data. So a fast session marks the file *unsynced* (a row of
``meta``, written durably at open and cleared durably at a clean close); a file found
marked at open was not closed cleanly, and every channel moves to a new epoch (same
offsets, same rows, like a rename): clients resuming from a position of before the
crash are told ``recovered: false`` instead of being handed other data as what followed
it. A crash of the process alone loses nothing (the OS still holds the WAL), but cannot
be told apart from a power loss, so it is treated the same.

Epochs. Each channel's epoch is stored with it. A channel created in a database starts
with the database's epoch, drawn once (``epoch_factory``) when the file is created, so a
reader of a channel that does not exist yet is told the epoch the channel will have and
its ``(epoch, 0)`` position stays valid once the channel is made. Channel rows are never
deleted: a channel restarting at offset 1 under an old epoch would mislead resuming
clients. Losing the file loses every history, and the new file draws a new epoch.

One directory serves one broker at a time: sequencing is in this process's memory. A
second instance on the same file cannot overwrite rows (offsets are a primary key), its
conflicting publishes fail instead.

As a ring node's store (``AdoptingStore``, ``RenewingStore``) it also takes channels
over from their old owner and restarts channels in new epochs: ``sqlite_ring``.

Presence is not stored: it lives in memory (``LocalPresence``), as it ends with the node.

Idle channels leave memory: every ``sweep_interval_s`` one sweep (a single timer for the
broker) expires history and idempotency keys past their time in the loaded channels,
and unloads those left with neither and nothing pending: their epoch and head offset,
all that recovery needs, are in the file, read again on next touch. The sweep also
trims their expired rows from the file, which otherwise happens only when a channel is
written again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Final

from tidings.brokers import sqlite_ring
from tidings.brokers.base import (
    HistoryRead,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.memory import LocalNode, LocalNodeControl, LocalPresence, random_epoch
from tidings.brokers.sqlite_commit import GroupCommit, LoadedChannel
from tidings.brokers.sqlite_renewal import Renewals
from tidings.brokers.sqlite_store import DURABILITIES, Durability, SqliteStore, StoredChannel
from tidings.brokers.sqlite_writer import SqliteWriter
from tidings.clock import Clock, SystemClock
from tidings.core.channel import ChannelName
from tidings.core.channel_log import ChannelLog, Duplicate
from tidings.core.dedupe import DedupeOptions, DedupeWindow, RememberedKey, dedupe_key
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay, decide_recovery
from tidings.errors import BrokerError, ConfigError

# DURABILITIES and Durability are the store's, offered here too: callers configure the broker.
__all__ = ["DB_FILE_NAME", "DURABILITIES", "Durability", "SqliteBroker"]

logger = logging.getLogger(__name__)

DB_FILE_NAME: Final = "tidings.db"
# ``is_ready`` asks the writer thread: a file stuck behind a stalled disk is not ready.
PROBE_TIMEOUT_S: Final = 1.0
SWEEP_INTERVAL_S: Final = 60.0

# Loading: a channel is loaded only while it is not in memory, hence while it has no
# publication pending (``sqlite_commit``), so what the writer thread reads is its whole
# state. Loads and writes run in one thread in submission order (``sqlite_writer``).


class SqliteBroker(LocalNode):
    """A single-node broker keeping its channels in a SQLite file; see the module docstring.

    Attributes:
        commits: how many write transactions committed (one per batch of publications).
        file: the database file.
    """

    def __init__(
        self,
        path: str | Path,
        namespaces: Namespaces,
        *,
        clock: Clock | None = None,
        dedupe: DedupeOptions | None = None,
        epoch_factory: Callable[[], str] = random_epoch,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        durability: Durability = "full",
    ) -> None:
        """Prepare a broker storing in directory ``path`` (created if missing) on ``start``.

        ``durability`` is ``"full"`` (a publish returns once fsynced) or ``"fast"`` (once
        written; see the module docstring).

        Raises:
            ConfigError: ``durability`` is neither.
        """
        if durability not in DURABILITIES:
            raise ConfigError(
                f"sqlite durability must be one of {list(DURABILITIES)}, got {durability!r}"
            )
        self._durability: Durability = durability
        self._file = self.file = Path(path) / DB_FILE_NAME
        self._namespaces = namespaces
        self._clock = clock or SystemClock()
        self._dedupe = dedupe or DedupeOptions()
        self._epoch_factory = epoch_factory
        self._store = SqliteStore(self._file, namespaces, self._dedupe)
        self._writer: SqliteWriter | None = None
        self._closing: asyncio.Future[None] | None = None
        self._epoch = ""  # the database's epoch, read on start
        self._channels: dict[ChannelName, LoadedChannel] = {}
        # Loads under way, with the ``Renewals.generation`` they began in.
        self._loading: dict[ChannelName, tuple[int, asyncio.Future[StoredChannel | None]]] = {}
        self._renewals = Renewals()
        self._subscribed: set[ChannelName] = set()
        self._on_publication: PublicationHandler | None = None
        self._group_commit = GroupCommit(self._write, self._committed, self._failed)
        self._presence = LocalPresence()
        self._control = LocalNodeControl()
        self._sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None
        self.commits = 0

    async def start(self, on_publication: PublicationHandler) -> None:
        """Open the file and start handing publications of subscribed channels to the handler.

        Raises:
            BrokerError: the file cannot be opened, or the broker was closed.
        """
        if self._closing is not None:
            raise BrokerError(f"the sqlite broker on {self._file} was closed; make a new one")
        if self._writer is None:
            writer = SqliteWriter(f"tidings-sqlite {self._file}")
            try:
                self._epoch, renewed = await writer.run(
                    partial(self._store.open, self._epoch_factory(), self._durability),
                    f"opening {self._file}",
                )
            except BaseException:
                writer.submit(self._store.close)  # in case the open completed after all
                writer.stop()
                raise
            self._writer = writer
            if renewed:
                logger.warning(
                    "%s was not closed cleanly under durability fast: its last publications "
                    "may be lost, so every channel starts a new epoch (%s)",
                    self._file,
                    self._epoch,
                )
            logger.info("sqlite broker opened %s (durability %s)", self._file, self._durability)
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())
        self._on_publication = on_publication

    async def close(self) -> None:
        """Commit the pending publications, then close the file; idempotent."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        # From here on no publish is accepted, so the flush below waits for the last batch.
        self._closing = closing = asyncio.get_running_loop().create_future()
        writer = self._writer
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        try:
            if writer is not None:
                await self._group_commit.flush()
                try:
                    await writer.run(self._store.close, f"closing {self._file}")
                finally:
                    writer.stop()
                logger.info("sqlite broker closed %s", self._file)
        finally:
            self._writer = None
            self._on_publication = None
            self._channels.clear()
            closing.set_result(None)

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Sequence ``data`` in ``channel``; return once it is committed (and delivered).

        Raises:
            BrokerError: the broker is not open, or storing failed (the publication was
                not made; retry with the same ``key``).
        """
        self._check_open()
        state = await self._channel(channel, create=True)
        assert state is not None
        now_ms = self._clock.now_ms()
        if key is not None:
            earlier = state.earlier_keys.lookup(dedupe_key(key, info), now_ms)
            if earlier is not None:
                return PublishResult(Position(state.log.epoch, earlier), duplicate=True)
        outcome = state.log.append(data, now_ms, key, info)
        if isinstance(outcome, Duplicate):
            if outcome.position.offset > state.committed_offset:
                # The original is not committed yet: answer only once it is.
                pending = self._group_commit.pending()
                assert pending is not None, "an uncommitted offset is in a batch"
                await asyncio.shield(pending)
            return PublishResult(outcome.position, duplicate=True)
        await asyncio.shield(self._group_commit.enqueue(outcome.publication))
        return PublishResult(outcome.publication.position)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s committed head and history (``Broker.history``), from memory.

        Raises:
            BrokerError: the broker is not open, or loading the channel failed.
        """
        self._check_open()
        state = await self._channel(channel, create=False)
        if state is None:
            # Reading must not create state: an unknown channel stays unknown.
            head = Position(self._epoch, 0)
            if since is None:
                return HistoryRead(head, Replay(()))
            return HistoryRead(head, decide_recovery(since, self._epoch, 0, (), limit))
        return state.read(since, limit, self._clock.now_ms())

    async def subscribe(self, channel: ChannelName) -> None:
        """Deliver ``channel``'s publications to this node's hub."""
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications."""
        self._subscribed.discard(channel)

    async def is_ready(self) -> bool:
        """Whether the file is open and the writer thread takes a job within
        ``PROBE_TIMEOUT_S`` (it is not stuck behind a stalled disk)."""
        writer = self._writer
        if writer is None or self._closing is not None:
            return False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                await asyncio.shield(writer.submit(lambda: None))
        except TimeoutError:
            return False
        return True

    async def sweep(self) -> int:
        """Expire history and keys past their time in the loaded channels; unload those
        left with neither and nothing pending, and trim their rows from the file.
        Return how many were unloaded.

        Raises:
            BrokerError: the broker is not open, or trimming the file failed (the
                channels are unloaded all the same: the file is the truth).
        """
        writer = self._check_open()
        now_ms = self._clock.now_ms()
        unloaded: list[tuple[ChannelName, int]] = []
        for channel, state in list(self._channels.items()):
            log = state.log
            if state.committed_offset != log.head_offset or channel in self._loading:
                continue  # a publication is on its way to the file
            state.earlier_keys.expire(now_ms)
            if log.expire(now_ms) and not state.earlier_keys:
                del self._channels[channel]
                unloaded.append((channel, log.head_offset))
        if unloaded:
            await writer.run(partial(self._store.trim, unloaded, now_ms), "trimming history")
        return len(unloaded)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                swept = await self.sweep()
                if swept:
                    logger.debug("unloaded %d idle channels of %s", swept, self._file)
            except BrokerError as error:
                logger.warning("sweeping idle channels failed: %s", error)
            except Exception:  # a bug here must not end the sweeps, nor the node
                logger.exception("sweeping idle channels failed")

    # -- as a ring node's store (sqlite_ring.py) ---------------------------------------

    async def held_channels(self) -> list[ChannelName]:
        """Every channel of the file, and those created since (``AdoptingStore``)."""
        return await sqlite_ring.held_channels(self)

    async def remembered_keys(self, channel: ChannelName) -> tuple[RememberedKey, ...]:
        """``channel``'s committed keys inside the dedupe window (``AdoptingStore``)."""
        return await sqlite_ring.remembered_keys(self, channel)

    async def adopt(
        self,
        channel: ChannelName,
        epoch: str,
        publications: Sequence[Publication],
        *,
        top: int,
        keys: Sequence[RememberedKey] = (),
    ) -> Position:
        """Take ``channel`` over from its old owner (``AdoptingStore.adopt``)."""
        return await sqlite_ring.adopt(self, channel, epoch, publications, top=top, keys=keys)

    def start_new_epoch(self) -> asyncio.Task[None]:
        """Restart every channel empty in one new epoch (``RenewingStore``)."""
        return sqlite_ring.start_new_epoch(self)

    def restart_channels(self, which: Callable[[ChannelName], bool]) -> asyncio.Task[int]:
        """Restart the channels ``which`` picks, each in a new epoch (``RenewingStore``)."""
        return sqlite_ring.restart_channels(self, which)

    # -- loading and committing channels (sqlite_ring.py uses them too) -------------

    def _check_open(self) -> SqliteWriter:
        if self._writer is None or self._closing is not None:
            raise BrokerError(f"the sqlite broker on {self._file} is not open")
        return self._writer

    async def _channel(self, channel: ChannelName, *, create: bool) -> LoadedChannel | None:
        """Return the loaded ``channel``, loading it first; a new one only with ``create``.
        Waits for the restarts under way (``sqlite_renewal``): none is served stale."""
        while True:
            if self._renewals.under_way:
                await self._renewals.wait()
            state = self._channels.get(channel)
            if state is not None:
                return state
            generation, loading = self._loading.get(channel) or (self._renewals.generation, None)
            if loading is None or generation != self._renewals.generation:
                writer = self._check_open()
                generation = self._renewals.generation
                loading = writer.submit(partial(self._store.load, channel, self._clock.now_ms()))
                self._loading[channel] = (generation, loading)
                loading.add_done_callback(partial(self._loaded, channel, generation))
            try:
                await asyncio.shield(loading)
            except (sqlite3.Error, OSError) as exc:
                raise BrokerError(f"loading channel {channel} failed: {exc}") from exc
            self._check_open()  # closing may have begun meanwhile; nothing may be queued then
            if generation != self._renewals.generation:
                continue  # a restart began meanwhile: what was read may be stale
            # The done-callback runs a loop iteration after the load completes; a caller
            # arriving in between must not see the channel as missing (it would read a
            # false head 0, or sequence offset 1 again). Installing is idempotent.
            self._loaded(channel, generation, loading)
            state = self._channels.get(channel)
            if state is None and create:
                history = self._namespaces.options_for(channel).history
                log = ChannelLog(channel, self._epoch, history, self._dedupe)
                state = self._channels[channel] = LoadedChannel(log, DedupeWindow(self._dedupe))
            return state

    def _loaded(
        self,
        channel: ChannelName,
        generation: int,
        loading: asyncio.Future[StoredChannel | None],
    ) -> None:
        """Install a loaded channel, once, as soon as the load completes, unless a
        restart began since the load did (``sqlite_renewal``)."""
        if self._loading.get(channel) == (generation, loading):
            del self._loading[channel]
        if loading.cancelled() or loading.exception() is not None:
            return
        stored = loading.result()
        if stored is None or channel in self._channels or self._closing is not None:
            return
        if generation != self._renewals.generation:
            return
        now_ms = self._clock.now_ms()
        history = self._namespaces.options_for(channel).history
        first = stored.retained[0].offset if stored.retained else stored.head_offset + 1
        log = ChannelLog(channel, stored.epoch, history, self._dedupe, head_offset=first - 1)
        for publication in stored.retained:
            log.restore(publication, now_ms)
        earlier_keys = DedupeWindow(self._dedupe)
        for key, offset, ts in stored.earlier_keys:
            earlier_keys.remember(key, offset, ts)
        self._channels[channel] = LoadedChannel(log, earlier_keys)

    def _write(self, publications: list[Publication]) -> asyncio.Future[None]:
        """Start writing a batch in the writer thread (``GroupCommit``)."""
        writer = self._writer
        assert writer is not None, "close flushes batches before stopping the writer"
        return writer.submit(partial(self._store.write, publications, self._clock.now_ms()))

    def _committed(self, publications: Sequence[Publication]) -> None:
        """Make a committed batch visible and deliver it (``GroupCommit``)."""
        self.commits += 1
        handler = self._on_publication
        channels = self._channels
        subscribed = self._subscribed
        for publication in publications:
            channels[publication.channel].committed_offset = publication.offset
            if handler is not None and publication.channel in subscribed:
                try:
                    handler(publication)
                except Exception:
                    logger.exception("publication handler raised in %s", publication.channel)

    def _failed(self, count: int, cause: BaseException) -> BrokerError:
        """Drop the loaded channels after a failed batch (``GroupCommit``); return the
        error its publishers are given."""
        logger.warning(
            "storing %d publications in %s failed; reloading channels from the file",
            count,
            self._file,
            exc_info=cause,
        )
        # Their offsets were given in memory only: forget every loaded channel, so the
        # next touch reloads the committed truth and sequences on from there.
        self._channels.clear()
        error = BrokerError(f"storing publications in {self._file} failed: {cause}")
        error.__cause__ = cause
        return error
