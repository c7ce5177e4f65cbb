"""One channel followed live by the NATS broker on this node: its publications arriving on
the live subject are judged against the last one delivered, and holes are filled from
history before anything newer is delivered. asyncio only (history is read through the
function the broker hands it); no NATS calls here.

Theory of operation. ``last`` is the position of the last publication handed to the
hub. Each arrival is judged by ``core.catchup.decide_catch_up``: the next one is
delivered, a repeat dropped; a hole (or another epoch past its offset 1) makes the
channel *sync*: arrivals queue in ``buffer`` while history after ``last`` is read and
delivered, then the queue is drained by the same rule (which may start another round).
While the connection is lost the channel *holds* (arrivals queue, ``buffer`` is not
``None``) until the broker asks it to sync once NATS is back. So the hub sees each
offset once, in order, with no hole history could fill; one history cannot fill (it
was evicted, or the stream was lost) is skipped with a warning, and the hub reports it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Final

from nats.aio.subscription import Subscription

from tidings.brokers.base import HistoryRead, PublicationHandler
from tidings.brokers.gap_filling import fill_gap_once
from tidings.core.backoff import Backoff
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, GapReason

logger = logging.getLogger(__name__)

RETRY_BASE_DELAY_S: Final = 0.05
RETRY_MAX_DELAY_S: Final = 2.0

HistoryReader = Callable[[ChannelName, Position | None], Awaitable[HistoryRead]]


def retry_backoff() -> Backoff:
    """Delays between retries: exponential with full jitter, so nodes spread theirs."""
    return Backoff(base_s=RETRY_BASE_DELAY_S, cap_s=RETRY_MAX_DELAY_S, uniform=random.uniform)


class LiveChannel:
    """This node's subscription to one channel; see the module docstring."""

    def __init__(
        self,
        channel: ChannelName,
        *,
        read_history: HistoryReader,
        deliver: Callable[[], PublicationHandler | None],
        history_size: int,
    ) -> None:
        self.channel = channel
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sub: Subscription | None = None
        self.last: Position | None = None
        self.active = True  # false once dropped: nothing more is delivered
        self._read_history = read_history
        self._deliver = deliver
        self._history_size = history_size
        self._buffer: list[Publication] | None = None
        self._sync_needed = False
        self._sync_task: asyncio.Task[None] | None = None

    @property
    def is_synced(self) -> bool:
        """Whether nothing is held or waiting to be read from history."""
        return self._buffer is None and not self._sync_needed

    @property
    def sync_task(self) -> asyncio.Task[None] | None:
        return self._sync_task

    def receive(self, publication: Publication) -> None:
        """Take a publication that arrived live."""
        if not self.active:
            return
        if self._buffer is not None:
            self._buffer.append(publication)
        elif not self._accept(publication):
            self._buffer = [publication]
            self.request_sync()

    def hold(self) -> None:
        """Queue arrivals from now on (the connection was lost) until a sync."""
        if self._buffer is None:
            self._buffer = []

    def drop(self) -> None:
        """Stop: nothing more is delivered."""
        self.active = False
        if self._sync_task is not None:
            self._sync_task.cancel()

    def _accept(self, publication: Publication) -> bool:
        """Deliver ``publication`` if it follows ``last``; drop a repeat. Return False
        (delivering nothing) when publications before it are missing."""
        outcome = decide_catch_up(self.last, publication.position)
        if outcome is CatchUp.GAP:
            # Another epoch: the stream was made again. Hold it from its start.
            self.last = Position(publication.epoch, 0)
            if publication.offset != 1:
                return False
        elif outcome is not CatchUp.DELIVER:
            return outcome is CatchUp.ALREADY_HAD
        self.last = publication.position
        handler = self._deliver()
        if handler is not None:
            try:
                handler(publication)
            except Exception:  # a faulty handler must not stop delivery
                logger.exception("publication handler failed on %s", publication.channel)
        return True

    def request_sync(self) -> None:
        """Fill the hole from history, holding arrivals meanwhile."""
        self.hold()
        self._sync_needed = True
        if self._sync_task is None and self.active:
            self._sync_task = asyncio.get_running_loop().create_task(
                self._sync(), name=f"tidings nats sync {self.channel}"
            )

    async def _sync(self) -> None:
        delay = retry_backoff()
        try:
            while self._sync_needed and self.active:
                self._sync_needed = False
                await fill_gap_once(
                    self.channel, self._sync_once, delay, on_failure=self._sync_again
                )
        finally:
            self._sync_task = None

    def _sync_again(self) -> None:
        self._sync_needed = True

    async def _sync_once(self) -> None:
        since = self.last
        read = await self._read_history(self.channel, since)
        if not self.active:
            return
        recovery = read.recovery
        if since is None:
            self.last = read.head
        elif isinstance(recovery, Gap):
            self._jump(since, read.head, recovery)
            self._sync_needed = True
            return
        else:
            for publication in recovery.publications:
                self._accept(publication)
        buffered = self._buffer or []
        self._buffer = None
        for index, publication in enumerate(buffered):
            if publication.epoch != read.head.epoch:
                continue  # of a stream since made again: stale
            if not self._accept(publication):
                self._buffer = buffered[index:]
                self._sync_needed = True
                return

    def _jump(self, since: Position, head: Position, gap: Gap) -> None:
        """Move ``last`` past a gap history cannot fill."""
        if gap.reason is GapReason.EPOCH_CHANGED:
            logger.warning(
                "the NATS stream lost %s (made again): epoch %s replaced %s",
                self.channel,
                head.epoch,
                since.epoch,
            )
            self.last = Position(head.epoch, 0)
        elif gap.reason is GapReason.AHEAD_OF_HEAD:
            logger.warning(
                "the NATS stream holds %s only up to %s, behind %s (it lost stored data)",
                self.channel,
                head,
                since,
            )
            self.last = head
        else:
            first = max(1, head.offset - self._history_size + 1)
            logger.warning(
                "publications %d..%d of %s left history before this node received them",
                since.offset + 1,
                first - 1,
                self.channel,
            )
            self.last = Position(head.epoch, first - 1)
