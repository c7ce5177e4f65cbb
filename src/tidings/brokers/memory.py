"""The embedded default broker: channels live in this process's memory.

No I/O; one timer task. Each channel is a ``ChannelLog``; a publish is sequenced,
retained and handed to the hub in one synchronous step, which is what makes it atomic
here. All channels share one epoch drawn at start, so a restart (which loses every
history) is seen by resuming clients as an epoch change: ``recovered: false``, never a
wrong offset. A channel whose history another node continued (a key of the hash ring
that comes back) is restarted alone, in an epoch of its own (``restart_channels``).
Presence is a dict per channel (``LocalPresence``): one node, so no remote changes;
node commands (``LocalNodeControl``) reach this node alone, which is every node.

Idle channels cost almost nothing: every ``sweep_interval_s`` one sweep (a single timer
for the broker, not one per channel) expires history and idempotency keys past their
time, and a channel left with neither (``ChannelLog.expire`` says bare) is kept as its
head position alone, in ``_heads``: all that recovery needs. A publish brings its log
back from that position.

As a ring node's store (``AdoptingStore``) it also takes channels over from their old
owner: ``adopt`` keeps their publications at the positions given, in the giver's epoch
(so a channel's epoch is its log's, which is the shared one unless adopted), and
remembers the giver's idempotency keys, evicted publications' ones too; a channel
restarted past a hole in its epoch keeps the keys it remembered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from tidings.brokers.base import (
    HasPresenceStore,
    HistoryRead,
    NodeCommand,
    NodeCommandHandler,
    PresenceHandler,
    PresenceStore,
    PublicationHandler,
    PublishResult,
)
from tidings.clock import Clock, SystemClock
from tidings.core.channel import ChannelName
from tidings.core.channel_log import Appended, ChannelLog, plan_adoption
from tidings.core.dedupe import DedupeOptions, RememberedKey
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay, decide_recovery

logger = logging.getLogger(__name__)

T = TypeVar("T")

SWEEP_INTERVAL_S: Final = 60.0
# Channels swept between two yields to the event loop: a sweep of a million channels
# must not hold the loop for its whole length.
SWEEP_CHUNK: Final = 1000


def _done(value: T) -> asyncio.Future[T]:
    """A future already done with ``value``: the memory broker's restarts are synchronous."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    future.set_result(value)
    return future


def random_epoch() -> str:
    """Return a fresh epoch: 11 random URL-safe characters."""
    return secrets.token_urlsafe(8)


class LocalPresence:
    """``PresenceStore`` of a single-node broker: ``{channel: {client_id: user}}`` in
    memory. The one node is every node, so there are no remote changes to hear and no
    dead node's entries to expire."""

    __slots__ = ("_by_channel",)

    def __init__(self) -> None:
        self._by_channel: dict[ChannelName, dict[str, str]] = {}

    def listen(self, on_change: PresenceHandler) -> None:
        """Never calls ``on_change``: every change is this node's own."""

    async def join(self, channel: ChannelName, client_id: str, user: str) -> None:
        """List ``client_id`` in ``channel``."""
        self._by_channel.setdefault(channel, {})[client_id] = user

    async def leave(self, channel: ChannelName, client_id: str) -> None:
        """Remove ``client_id`` from ``channel``; forget the channel once empty."""
        clients = self._by_channel.get(channel)
        if clients is not None:
            clients.pop(client_id, None)
            if not clients:
                del self._by_channel[channel]

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return a copy of ``channel``'s ``{client_id: user}``."""
        return dict(self._by_channel.get(channel, {}))


def presence_store_of(broker: object) -> PresenceStore:
    """Return ``broker``'s own presence store, or, for a broker that keeps none (an
    embedding application's), a new one for this node alone."""
    if isinstance(broker, HasPresenceStore):
        return broker.presence_store
    return LocalPresence()


class LocalNodeControl:
    """``NodeControl`` of a single-node broker: a command sent is handled here, at once."""

    __slots__ = ("_on_command",)

    def __init__(self) -> None:
        self._on_command: NodeCommandHandler | None = None

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand each command sent from now on to ``on_command``."""
        self._on_command = on_command

    async def send_to_nodes(self, command: NodeCommand) -> int:
        """Handle ``command`` here (``NodeControl.send_to_nodes``)."""
        return self.send(command)

    def send(self, command: NodeCommand) -> int:
        """Handle ``command`` here, without awaiting; return 1, the one node."""
        handler = self._on_command
        if handler is not None:
            try:
                handler(command)
            except Exception:  # the sender must not fail for a faulty handler
                logger.exception("node command handler failed on %r", command)
        return 1


class LocalNode:
    """Presence and node commands of a broker whose node is the only one (memory,
    sqlite): both stay in this process. A subclass sets ``_presence`` and ``_control``."""

    _presence: LocalPresence
    _control: LocalNodeControl

    @property
    def presence_store(self) -> LocalPresence:
        """This node's presence, in memory (``HasPresenceStore``)."""
        return self._presence

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand node commands to ``on_command`` (``NodeControl.listen``)."""
        self._control.listen(on_command)

    async def send_to_nodes(self, command: NodeCommand) -> int:
        """Handle ``command`` on this node, the only one (``NodeControl.send_to_nodes``)."""
        return self._control.send(command)


class MemoryBroker(LocalNode):
    """A single-process broker; see the module docstring."""

    def __init__(
        self,
        namespaces: Namespaces,
        *,
        clock: Clock | None = None,
        dedupe: DedupeOptions | None = None,
        epoch_factory: Callable[[], str] = random_epoch,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self._namespaces = namespaces
        self._clock = clock or SystemClock()
        self._dedupe = dedupe or DedupeOptions()
        self._epoch_factory = epoch_factory
        self._epoch = epoch_factory()
        # Channels restarted in an epoch of their own (``restart_channels``).
        self._epochs: dict[ChannelName, str] = {}
        self._logs: dict[ChannelName, ChannelLog] = {}
        # Swept channels: their head offset is all that is left of them (the module
        # docstring); a channel is in ``_logs`` or here, never both.
        self._heads: dict[ChannelName, Position] = {}
        self._sweep_interval_s = sweep_interval_s
        self._sweeper: asyncio.Task[None] | None = None
        self._subscribed: set[ChannelName] = set()
        self._on_publication: PublicationHandler | None = None
        self._presence = LocalPresence()
        self._control = LocalNodeControl()
        self._closed = False

    async def start(self, on_publication: PublicationHandler) -> None:
        """Start handing publications of subscribed channels to ``on_publication``."""
        self._on_publication = on_publication
        if self._sweeper is None and not self._closed:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def close(self) -> None:
        """Stop delivering publications; the broker is not ready from now on."""
        self._on_publication = None
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    def start_new_epoch(self) -> asyncio.Future[None]:
        """Forget every channel's history and keys, and draw a new epoch for them all, as
        a restart would (``RenewingStore``): what this node sequenced may have been
        continued elsewhere since (a node of the hash ring that lost its lease:
        ``server.ring_node``). A client resuming from a position of the old epoch hears
        ``recovered: false``; a subscriber still here is told of the gap by the first
        publication of the new one (``hub``). Done at once: the future returned is
        already done."""
        self._epoch = self._epoch_factory()
        self._epochs.clear()
        self._logs.clear()
        self._heads.clear()
        return _done(None)

    def restart_channels(self, which: Callable[[ChannelName], bool]) -> asyncio.Future[int]:
        """Forget the history and keys of each channel held here for which ``which``
        is true, and start each in a new epoch of its own, as ``start_new_epoch`` does
        for all (``RenewingStore``): another node has sequenced them since this one did
        (a key of the hash ring that comes back to this node: ``core.ring_gains``).
        Done at once: the future returned, already done, gives how many."""
        restarted = [channel for channel in (*self._logs, *self._heads) if which(channel)]
        for channel in restarted:
            self._logs.pop(channel, None)
            self._heads.pop(channel, None)
            self._epochs[channel] = self._epoch_factory()
        return _done(len(restarted))

    def _epoch_of(self, channel: ChannelName) -> str:
        return self._epochs.get(channel, self._epoch)

    async def sweep(self) -> int:
        """Expire history and keys past their time in every channel; keep the channels
        left bare as their head offset alone. Return how many were reduced so."""
        return self._sweep_channels(list(self._logs), self._clock.now_ms())

    def _sweep_channels(self, channels: list[ChannelName], now_ms: int) -> int:
        swept = 0
        for channel in channels:
            log = self._logs.get(channel)
            if log is not None and log.expire(now_ms):
                del self._logs[channel]
                self._heads[channel] = log.head
                swept += 1
        return swept

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval_s)
            try:
                channels = list(self._logs)
                now_ms = self._clock.now_ms()
                swept = 0
                for start in range(0, len(channels), SWEEP_CHUNK):
                    swept += self._sweep_channels(channels[start : start + SWEEP_CHUNK], now_ms)
                    await asyncio.sleep(0)
                if swept:
                    logger.debug("swept %d idle channels down to their heads", swept)
            except Exception:  # a bug here must not end the sweeps, nor the node
                logger.exception("sweeping idle channels failed")

    def _log(self, channel: ChannelName) -> ChannelLog:
        log = self._logs.get(channel)
        if log is None:
            head = self._heads.pop(channel, None) or Position(self._epoch_of(channel), 0)
            log = self._new_log(channel, head)
        return log

    def _new_log(self, channel: ChannelName, head: Position) -> ChannelLog:
        options = self._namespaces.options_for(channel)
        log = ChannelLog(channel, head.epoch, options.history, self._dedupe, head.offset)
        self._logs[channel] = log
        return log

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Sequence, retain and deliver ``data`` in ``channel``, in one step."""
        outcome = self._log(channel).append(data, self._clock.now_ms(), key, info)
        if not isinstance(outcome, Appended):
            return PublishResult(outcome.position, duplicate=True)
        publication = outcome.publication
        if self._on_publication is not None and channel in self._subscribed:
            try:
                self._on_publication(publication)
            except Exception:  # the publication is made; a faulty handler must not undo it
                logger.exception("publication handler failed on %s", channel)
        return PublishResult(publication.position)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``)."""
        log = self._logs.get(channel)
        if log is None:
            # Reading must not create state: an unknown or swept channel has no history,
            # only a head (offset 0 for one never published to).
            head = self._heads.get(channel) or Position(self._epoch_of(channel), 0)
            if since is None:
                return HistoryRead(head, Replay(()))
            return HistoryRead(head, decide_recovery(since, head.epoch, head.offset, (), limit))
        now_ms = self._clock.now_ms()
        recovery = log.since(since, now_ms, limit) if since else Replay(log.latest(now_ms, limit))
        return HistoryRead(log.head, recovery)

    async def held_channels(self) -> list[ChannelName]:
        """Return the channels published to or adopted (``AdoptingStore``)."""
        return [*self._logs, *self._heads]

    async def remembered_keys(self, channel: ChannelName) -> tuple[RememberedKey, ...]:
        """Return ``channel``'s keys inside the dedupe window (``AdoptingStore``)."""
        log = self._logs.get(channel)
        # A swept channel is bare: it has no key left.
        return () if log is None else log.remembered_keys(self._clock.now_ms())

    async def adopt(
        self,
        channel: ChannelName,
        epoch: str,
        publications: Sequence[Publication],
        *,
        top: int,
        keys: Sequence[RememberedKey] = (),
    ) -> Position:
        """Store ``publications`` at their positions and remember ``keys``
        (``AdoptingStore.adopt``), in one step."""
        log = self._logs.get(channel)
        held = log.head if log is not None else self._heads.get(channel)
        plan = plan_adoption(held, epoch, publications, top)
        now_ms = self._clock.now_ms()
        if plan.restart_at is not None:
            # Past a hole in the same epoch the keys stay true: the giver does not send
            # them again (``Adoption.keeps_keys``).
            kept = log.remembered_keys(now_ms) if log is not None and plan.keeps_keys else ()
            self._heads.pop(channel, None)
            log = self._new_log(channel, Position(epoch, plan.restart_at))
            log.adopt_keys(kept)
        elif log is None:
            if not plan.publications and not keys:
                assert held is not None  # plan_adoption restarts a channel not held
                return held
            log = self._log(channel)
        deliver = self._on_publication if channel in self._subscribed else None
        for publication in plan.publications:
            log.restore(publication, now_ms)
            if deliver is not None:
                try:
                    deliver(publication)
                except Exception:  # stored; a faulty handler must not undo it
                    logger.exception("publication handler failed on %s", channel)
        assert log.epoch == epoch  # plan_adoption restarts a channel of another epoch
        log.adopt_keys(k for k in keys if k.offset <= log.head_offset)
        return log.head

    async def subscribe(self, channel: ChannelName) -> None:
        """Deliver ``channel``'s publications to this node's hub."""
        self._subscribed.add(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications."""
        self._subscribed.discard(channel)

    async def is_ready(self) -> bool:
        """Ready until closed: there is nothing to reach."""
        return not self._closed
