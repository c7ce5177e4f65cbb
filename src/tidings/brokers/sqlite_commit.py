"""The group commit of the ``sqlite`` broker: batches of publications, and what is
visible when.

Runs on the event loop and does no I/O itself: a batch is written by a ``write``
callable the broker gives (a job of its writer thread, ``sqlite_writer``), and the
broker is told of each batch committed or failed. A loaded channel (``LoadedChannel``)
shows only its committed publications.

Theory of operation. Sequencing is synchronous on the event loop: ``ChannelLog.append``
gives the next offset, and the publication joins the *open batch*. At most one batch is
*in flight* (being written by the writer thread, in one transaction). When it commits,
its publications become visible (``committed_offset`` advances, subscribed ones go to
``on_publication``), its publishers' ``publish`` calls return, and the open batch,
holding everything published meanwhile, is handed off as the next single transaction.
A batch opened while nothing is in flight is handed off on the next loop iteration, so
publishes made in one iteration share one transaction.

What is durable when: a publication is durable once its batch's COMMIT returned
(``durability="full"``: the WAL was fsynced, it survives a power loss; ``"fast"``: it
survives a crash of this process, and a power loss may roll back the last transactions
before a checkpoint, which the unsynced mark turns into new epochs at the next open).
Until then nobody sees it: ``publish`` has not returned, history is clipped to
``committed_offset``, a duplicate of its key waits for the commit, and it is not
delivered. So no client ever holds an offset that a crash could reissue with other data.

Order: batches are written and completed strictly one after another, and within a batch
publications are in append order, so per channel the stored order and the delivered
order are the offset order, whatever the concurrency of publishers.

Failure: if a transaction fails, its publications were sequenced in memory but are not
stored, and the open batch was sequenced after them. Both batches fail with
``BrokerError`` and every loaded channel is dropped, to be reloaded from the file (the
truth) on next touch, so offsets stay gap-free. As history is clipped to committed
offsets, no reader saw the lost ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from functools import partial

from tidings.brokers.base import HistoryRead
from tidings.core.channel_log import ChannelLog
from tidings.core.dedupe import DedupeWindow, RememberedKey
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.errors import BrokerError


class LoadedChannel:
    """A loaded channel: its log, the keys stored before its retained history, and how
    far its publications are committed."""

    __slots__ = ("committed_offset", "earlier_keys", "log")

    def __init__(self, log: ChannelLog, earlier_keys: DedupeWindow) -> None:
        self.log = log
        # Keys of publications no longer retained but inside the dedupe window: the log's
        # own window only learns keys from the publications restored into it.
        self.earlier_keys = earlier_keys
        self.committed_offset = log.head_offset

    def remembered_keys(self, now_ms: int) -> tuple[RememberedKey, ...]:
        """The committed keys inside the dedupe window at ``now_ms``, oldest first: the
        earlier ones and those of the retained publications (``AdoptingStore``)."""
        seen: set[str] = set()
        keys: list[RememberedKey] = []
        # The earlier keys first: ``publish`` looks there first too.
        for remembered in (*self.earlier_keys.entries(now_ms), *self.log.remembered_keys(now_ms)):
            if remembered.offset <= self.committed_offset and remembered.key not in seen:
                seen.add(remembered.key)
                keys.append(remembered)
        keys.sort(key=lambda remembered: (remembered.ts, remembered.offset))
        return tuple(keys)

    def read(self, since: Position | None, limit: int | None, now_ms: int) -> HistoryRead:
        """Read the committed part of the channel (``Broker.history``)."""
        log = self.log
        committed = self.committed_offset
        head = Position(log.epoch, committed)
        pending = log.head_offset - committed
        if since is None:
            if not pending:
                return HistoryRead(head, Replay(log.latest(now_ms, limit)))
            wanted = None if limit is None else limit + pending
            publications = tuple(p for p in log.latest(now_ms, wanted) if p.offset <= committed)
            if limit is not None:
                publications = publications[max(0, len(publications) - limit) :]
            return HistoryRead(head, Replay(publications))
        if since.epoch == log.epoch and committed < since.offset <= log.head_offset:
            # Only an uncommitted offset lies there, which no client can have been given.
            return HistoryRead(head, Gap(GapReason.AHEAD_OF_HEAD))
        recovery = log.since(since, now_ms, limit)
        if pending and isinstance(recovery, Replay):
            recovery = Replay(tuple(p for p in recovery.publications if p.offset <= committed))
        return HistoryRead(head, recovery)


class Batch:
    """Publications written in one transaction, and the future their publishers await."""

    __slots__ = ("done", "publications")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done
        self.publications: list[Publication] = []


class GroupCommit:
    """The open batch and the one in flight; see the module docstring."""

    def __init__(
        self,
        write: Callable[[list[Publication]], asyncio.Future[None]],
        on_committed: Callable[[Sequence[Publication]], None],
        on_failed: Callable[[int, BaseException], BrokerError],
    ) -> None:
        """Hand batches to ``write`` (the future of their transaction).

        Args:
            write: start writing publications in one transaction; return its future.
            on_committed: called with a batch's publications once committed, before
                its publishers are answered (to advance and deliver them).
            on_failed: called with the number of publications lost and the cause when
                a transaction failed (to drop the loaded channels); returns the error
                raised to their publishers.
        """
        self._write = write
        self._on_committed = on_committed
        self._on_failed = on_failed
        self._open_batch: Batch | None = None
        self._in_flight: Batch | None = None

    def pending(self) -> asyncio.Future[None] | None:
        """Return the commit of the last publication enqueued, unless all are done."""
        last = self._open_batch or self._in_flight
        return None if last is None else last.done

    def enqueue(self, publication: Publication) -> asyncio.Future[None]:
        """Add ``publication`` to the open batch; return the future of its commit."""
        batch = self._open_batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._open_batch = Batch(loop.create_future())
            if self._in_flight is None:
                # Let the publishes already scheduled in this iteration join the batch.
                loop.call_soon(self._hand_off)
        batch.publications.append(publication)
        return batch.done

    async def flush(self) -> None:
        """Wait until every publication made so far is committed (or failed)."""
        last = self.pending()
        if last is not None:
            # A failed batch was already raised to its publishers and logged.
            with contextlib.suppress(BrokerError):
                await asyncio.shield(last)

    def _hand_off(self) -> None:
        """Send the open batch to the writer thread, unless a transaction is in flight."""
        batch = self._open_batch
        if batch is None or self._in_flight is not None:
            return
        self._open_batch = None
        self._in_flight = batch
        written = self._write(batch.publications)
        written.add_done_callback(partial(self._written, batch))

    def _written(self, batch: Batch, written: asyncio.Future[None]) -> None:
        """Complete ``batch`` once its transaction ended, then hand off the next one."""
        assert batch is self._in_flight
        self._in_flight = None
        error = written.exception() if not written.cancelled() else asyncio.CancelledError()
        if error is None:
            self._on_committed(batch.publications)
            batch.done.set_result(None)
        else:
            self._fail(batch, error)
        self._hand_off()

    def _fail(self, batch: Batch, cause: BaseException) -> None:
        failed = [batch]
        if self._open_batch is not None:
            failed.append(self._open_batch)
            self._open_batch = None
        error = self._on_failed(sum(len(b.publications) for b in failed), cause)
        for failed_batch in failed:
            failed_batch.done.set_exception(error)
            failed_batch.done.exception()  # retrieved: publishers may all have gone
