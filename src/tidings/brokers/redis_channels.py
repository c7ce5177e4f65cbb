"""This node's subscriptions to channels on Redis: subscribe and unsubscribe bookkeeping,
delivery of live publications in offset order, and the catch-up from history when some
were missed (``tidings.core.catchup`` decides; this module does the reads). The I/O goes
through the pub/sub links (``redis_link``) and the broker's history read.

Theory of operation
-------------------
Each subscribed channel has a ``_ChannelState``: its topic, the pub/sub link it is
subscribed on, whether Redis *confirmed* that subscription, and ``last``, the position
of the last publication handed to the hub.

* ``subscribe`` queues a SUBSCRIBE (SSUBSCRIBE in a cluster) on the link; the link's
  writer sends everything queued since its last write as one command (one per slot in
  a cluster, all in one write), so a reconnect storm of thousands of channels costs a
  handful of commands. ``subscribe`` returns only after Redis confirmed it and after
  reading the channel's head into ``last``: a publication made after it returns has a
  larger offset and arrives live; anything up to ``last`` is in history, which the hub
  reads next. Messages that reach the link before the confirmation belong to an
  earlier subscription and are dropped. ``unsubscribe`` likewise returns once Redis
  confirmed it, delivering until then what Redis sent before its confirmation: what
  was published before the call arrives, nothing published after it returns.
* A live publication is delivered if it is ``last``'s successor; at or below ``last``
  it is a repeat and dropped; past it (or in a new epoch, past offset 1) publications
  were missed: the channel starts *syncing*.
* Syncing: live publications queue in ``buffer`` while history after ``last`` is read
  and delivered, then the buffer is drained by the same rule (which may start another
  round). So the hub sees each offset once, in order, with no hole that history could
  fill. If the epoch changed, the new epoch's publications are delivered from offset
  1; if history no longer holds the missing ones, the node resumes from the oldest
  retained and logs it (the hub sees the skip).
* A lost link (EOF, error, no answer to a PING within ``redis_link.PING_INTERVAL_S``)
  marks its channels unconfirmed (``mark_lost``); the broker's recovery reconnects and
  calls ``resubscribe``, which subscribes every such channel again (buffering from then
  on) and syncs each one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import msgspec

from tidings.brokers.base import HistoryRead, PublicationHandler
from tidings.brokers.gap_filling import fill_gap_once
from tidings.brokers.redis_link import REDIS_ERRORS, PubSubLink
from tidings.brokers.redis_presence import is_presence_frame
from tidings.brokers.redis_scripts import decode_live
from tidings.core.backoff import Backoff
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

# Reads ``channel``'s head and history after ``since`` (``RedisBroker.history``).
ReadHistory = Callable[[ChannelName, Position | None, int | None], Awaitable[HistoryRead]]
# Moves ``channel`` to a new epoch when its head is of ``since``'s epoch but behind it
# (``redis_scripts.RESET``); returns the head's epoch afterwards.
ResetChannel = Callable[[ChannelName, Position], Awaitable[str]]


@dataclass(slots=True, eq=False)
class _ChannelState:
    """This node's subscription to one channel; see the theory of operation."""

    channel: ChannelName
    topic: str
    ready: asyncio.Future[None]
    link: PubSubLink | None = None
    subscribed: bool = False  # ``subscribe`` completed
    confirmed: bool = False  # Redis confirmed the subscription on ``link``
    last: Position | None = None  # the last publication handed to the hub
    buffer: list[Publication] | None = None  # live publications held while syncing
    sync_needed: bool = False
    sync_task: asyncio.Task[None] | None = None
    retired_epoch: str | None = None  # an epoch this node moved away from (rollback)
    leaving: asyncio.Future[None] | None = None  # an unsubscribe awaiting Redis

    def sync_again(self) -> None:
        """The gap is still there: fill it again."""
        self.sync_needed = True


class RedisChannels:
    """The channels this node is subscribed to on Redis; see the theory of operation.

    Attributes:
        on_publication: where publications go, in offset order per channel (set by
            the broker on start; ``None`` delivers nothing).
    """

    def __init__(
        self,
        *,
        link_for: Callable[[str], Awaitable[PubSubLink]],
        read_history: ReadHistory,
        reset: ResetChannel,
        on_presence: Callable[[bytes], None],
        is_reachable: Callable[[], bool],
        backoff: Callable[[], Backoff],
    ) -> None:
        """Keep subscriptions through ``link_for`` (the open link of a topic's server),
        read what was missed with ``read_history``, move a channel rolled back in place
        to a new epoch with ``reset``; hand presence frames on a channel's topic to
        ``on_presence``. ``is_reachable`` says whether a subscribe may be tried now;
        ``backoff`` gives the delays between retries of a failed sync."""
        self._link_for = link_for
        self._read_history = read_history
        self._reset = reset
        self._on_presence = on_presence
        self._is_reachable = is_reachable
        self._backoff = backoff
        self._states: dict[str, _ChannelState] = {}
        self._closed = False
        self._debug = logger.isEnabledFor(logging.DEBUG)
        self.on_publication: PublicationHandler | None = None

    def last_of(self, topic: str) -> Position | None:
        """The position of the last publication delivered on ``topic`` (``None`` when not
        subscribed or nothing was delivered): a floor no head of its epoch may be under."""
        state = self._states.get(topic)
        return None if state is None else state.last

    async def close(self) -> None:
        """Stop syncing and forget every subscription; pending subscribes are cancelled."""
        self._closed = True
        self.on_publication = None
        tasks = [s.sync_task for s in self._states.values() if s.sync_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for state in self._states.values():
            if not state.ready.done():
                state.ready.cancel()
        self._states.clear()

    # -- subscribing -------------------------------------------------------------------

    async def subscribe(self, channel: ChannelName, topic: str) -> None:
        """Deliver ``channel``'s publications (on ``topic``); returns once Redis confirmed
        it and the head was read.

        Raises:
            BrokerError: Redis is unreachable now (the broker is reconnecting).
        """
        while (state := self._states.get(topic)) is not None:
            if state.leaving is None:
                await asyncio.shield(state.ready)
                return
            # An unsubscribe is under way: subscribe again once it is done.
            if state.leaving.done():
                self._drop(state)
            else:
                await asyncio.wait([state.leaving])
        if self._closed or not self._is_reachable():
            raise BrokerError(f"cannot subscribe {channel}: Redis is not reachable now")
        state = _ChannelState(channel, topic, asyncio.get_running_loop().create_future())
        self._states[topic] = state
        try:
            await self._subscribe_at_redis(state)
            # The head after the confirmation: what the hub reads next covers up to it.
            read = await self._read_history(channel, None, 0)
            if self._states.get(topic) is state and not state.confirmed:
                raise BrokerError(f"lost the connection to Redis while subscribing {channel}")
        except BaseException as exc:
            if self._states.get(topic) is state:
                self._drop(state)
                if state.link is not None and state.link.is_open:
                    state.link.unsubscribe_nowait(topic)
            if not isinstance(exc, Exception):
                state.ready.cancel()
                raise
            if isinstance(exc, REDIS_ERRORS):
                error = BrokerError(f"subscribing {channel} failed: {exc}")
                error.__cause__ = exc
                state.ready.set_exception(error)
                state.ready.exception()  # retrieved: there may be no other waiter
                raise error from exc
            state.ready.set_exception(exc)
            state.ready.exception()
            raise
        if state.last is None:
            state.last = read.head
        state.subscribed = True
        state.ready.set_result(None)

    async def _subscribe_at_redis(self, state: _ChannelState) -> None:
        link = await self._link_for(state.topic)
        state.link = link
        state.confirmed = False
        await link.request("subscribe", state.topic, lambda: self._confirmed(state, link))

    def _confirmed(self, state: _ChannelState, link: PubSubLink) -> None:
        if self._states.get(state.topic) is state and state.link is link:
            state.confirmed = True

    async def unsubscribe(self, channel: ChannelName, topic: str) -> None:
        """Stop delivering ``channel``'s publications; returns once Redis confirmed.
        Publications made before the call are still delivered (those Redis sent before
        its confirmation); none made after it returns."""
        state = self._states.get(topic)
        if state is None:
            return
        if state.leaving is None:
            if not state.ready.done():
                await asyncio.wait([state.ready])  # a subscribe under way: let it finish
                if self._states.get(topic) is not state or state.leaving is not None:
                    await self.unsubscribe(channel, topic)
                    return
            link = state.link
            if link is None or not link.is_open or not state.confirmed:
                self._drop(state)
                return
            state.leaving = link.request("unsubscribe", topic, lambda: self._drop(state))
        try:
            await asyncio.shield(state.leaving)
        except REDIS_ERRORS:
            self._drop(state)  # the link is gone (or refused): nothing more comes from it

    def _drop(self, state: _ChannelState) -> None:
        """Forget ``state``: nothing more is delivered for it."""
        if self._states.get(state.topic) is state:
            del self._states[state.topic]
        state.confirmed = False
        if state.sync_task is not None:
            state.sync_task.cancel()

    # -- receiving -----------------------------------------------------------------------

    def receive(self, link: PubSubLink, topic: str, payload: bytes) -> bool:
        """Take what Redis sent on ``topic`` through ``link``; return False (taking
        nothing) when no subscription of this node is confirmed there."""
        state = self._states.get(topic)
        if state is None or state.link is not link or not state.confirmed:
            return False  # not (or no longer, or not yet) subscribed: see the theory
        if is_presence_frame(payload):
            self._on_presence(payload)
            return True
        try:
            publication = decode_live(payload)
        except (msgspec.ValidationError, ValueError):
            logger.error("unreadable publication on %s: %r", topic, payload[:200])
            return True
        if self._debug:
            logger.debug("received %s at %s", publication.channel, publication.position)
        if state.buffer is not None:
            state.buffer.append(publication)
        elif not self._accept(state, publication):
            state.buffer = [publication]
            self._request_sync(state)
        return True

    def _accept(self, state: _ChannelState, publication: Publication) -> bool:
        """Deliver ``publication`` if it follows ``state.last``; drop a repeat. Return
        False (delivering nothing) when publications before it are missing."""
        retired = state.retired_epoch
        outcome = decide_catch_up(
            state.last, publication.position, () if retired is None else (retired,)
        )
        if outcome is CatchUp.GAP:
            # Another epoch: the old one's history is gone. Hold the new one from its
            # start, where offset 1 follows and any other is a hole to read.
            state.last = Position(publication.epoch, 0)
            if publication.offset != 1:
                return False
        elif outcome is not CatchUp.DELIVER:
            return outcome is CatchUp.ALREADY_HAD
        state.last = publication.position
        handler = self.on_publication
        if handler is not None:
            try:
                handler(publication)
            except Exception:  # a faulty handler must not stop delivery
                logger.exception("publication handler failed on %s", publication.channel)
        return True

    # -- syncing: filling gaps from history ----------------------------------------------

    def _request_sync(self, state: _ChannelState) -> None:
        if state.buffer is None:
            state.buffer = []
        state.sync_needed = True
        if state.sync_task is None and not self._closed:
            state.sync_task = asyncio.get_running_loop().create_task(
                self._sync(state), name=f"tidings redis sync {state.channel}"
            )

    async def _sync(self, state: _ChannelState) -> None:
        delay = self._backoff()
        try:
            while state.sync_needed and self._states.get(state.topic) is state:
                if not state.confirmed:
                    return  # resubscribing: the recovery asks again once confirmed
                state.sync_needed = False
                await fill_gap_once(
                    state.channel,
                    partial(self._sync_once, state),
                    delay,
                    on_failure=state.sync_again,
                )
        finally:
            state.sync_task = None

    async def _sync_once(self, state: _ChannelState) -> None:
        channel = state.channel
        since = state.last
        read = await self._read_history(channel, since, None)
        if self._states.get(state.topic) is not state:
            return
        recovery = read.recovery
        if since is None:
            state.last = read.head
        elif isinstance(recovery, Gap):
            await self._jump(state, since, read.head, recovery)
            state.sync_needed = True
            return
        else:
            for publication in recovery.publications:
                self._accept(state, publication)
        # Live publications held meanwhile, by the same rule. One of an epoch other than
        # the head's read now is stale (or so new that the next publication after it
        # will start another round); delivering it could only go back in time.
        buffered = state.buffer or []
        state.buffer = None
        current = read.head.epoch
        for index, publication in enumerate(buffered):
            if publication.epoch != current:
                continue
            if not self._accept(state, publication):
                state.buffer = buffered[index:]
                state.sync_needed = True
                return

    async def _jump(self, state: _ChannelState, since: Position, head: Position, gap: Gap) -> None:
        """Move ``state.last`` past a gap history cannot fill."""
        channel = state.channel
        if gap.reason is GapReason.EPOCH_CHANGED:
            logger.warning(
                "Redis lost or rolled back %s (restarted, failed over, slot moved): "
                "epoch %s replaced %s",
                channel,
                head.epoch,
                since.epoch,
            )
            state.last = Position(head.epoch, 0)
        elif gap.reason is GapReason.AHEAD_OF_HEAD:
            # Redis came back from an older snapshot: offsets past its head were given
            # out already. Move the channel to a new epoch rather than reuse them.
            epoch = await self._reset(channel, since)
            logger.warning(
                "Redis rolled %s back from %s to offset %d; new epoch %s",
                channel,
                since,
                head.offset,
                epoch,
            )
            state.retired_epoch = since.epoch
            state.last = Position(epoch, 0) if epoch != since.epoch else since
        else:
            latest_read = await self._read_history(channel, None, None)
            retained = latest_read.recovery
            assert isinstance(retained, Replay)
            newest = latest_read.head
            first = retained.publications[0].offset if retained.publications else newest.offset + 1
            logger.warning(
                "publications %d..%d of %s were evicted before this node received them",
                since.offset + 1,
                first - 1,
                channel,
            )
            state.last = Position(newest.epoch, first - 1)

    # -- recovery ------------------------------------------------------------------------

    def mark_lost(self, link: PubSubLink) -> None:
        """``link`` was lost: its subscriptions are no longer confirmed."""
        for state in self._states.values():
            if state.link is link:
                state.confirmed = False

    async def resubscribe(self) -> int:
        """Subscribe again every channel whose link was lost, then sync them; return how
        many. Call after reconnecting.

        Raises:
            RedisError, OSError, BrokerError: Redis failed; the recovery tries again.
        """
        for state in [s for s in self._states.values() if s.leaving is not None]:
            self._drop(state)  # was unsubscribing when the link was lost: done
        states = [s for s in self._states.values() if s.subscribed and not s.confirmed]
        waits = []
        for state in states:
            if state.buffer is None:
                state.buffer = []
            waits.append(self._subscribe_at_redis(state))
        results = await asyncio.gather(*waits, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for state in states:
            if self._states.get(state.topic) is state and state.confirmed:
                self._request_sync(state)
        return len(states)
