"""The hand-over of channels between owners in a transition of the ring (docs/modes/hashing.md,
"Scaling without loss"; the roles and decisions are ``core.handover``'s): each new ring
settled, and the giver's side. asyncio, and HTTP between nodes: ``POST /node/handover``
to the receivers, signed as forwarded calls are (``core.node_call``), each call carrying
the messages of several channels (``server.handover_sending``).

Theory of operation
-------------------
Each version of the ring reaches ``Handover.receive_ring`` before anything else of the
node: the placement routes by it, and the channels this node now sequences without
having been handed them whole (their sequencer crashed) restart in a new epoch before
any publication is sequenced in them (``sequencing_ready`` gates the broker), so no
offset of the dead sequencer's epoch is given twice (``core.ring_gains.decide_takeover``,
the rule a node without hand-over follows too).

A *giver* (a node of the ring's ``previous``) runs ``hand_over`` for the version
(``brokers.ring.membership`` runs it, and writes ``handed/<v>/<node>`` when it returns;
a newer version cancels it and starts the next). For each channel its store holds that
moves (``publishing_role`` is ``Sequence(copy_to=R)``), and each first published during
the transition, one *pump* sends R a snapshot (epoch, top offset, the retained
publications), then every publication made since, read back from the store in offset
order (so concurrent publishes cannot reorder them). The snapshot also carries the
channel's idempotency keys inside the dedupe window whose publications it does not
carry (evicted from history, or never retained: ``history_size = 0``), with their
original times; a long window goes on in the messages that follow it, its last keys
before the channel's sealed top. R answers the position it holds, or ``resync`` (the
pump sends a fresh snapshot, keys and all). A pump whose next publications were
evicted before it read them (a history evicting faster than it sends; with
``history_size = 0``, each publication) sends a fresh snapshot too, but with only the
keys above the position R acknowledged with every key below it in this run: R keeps
the keys it remembers when such a snapshot restarts the channel past a hole in the same
epoch (``core.channel_log.Adoption.keeps_keys``), so the window moves once, not once
a publication. Once R holds a channel's snapshot the giver's clients of it may move
there (``FollowingPlacement.receiver_holds``). The steps:

1. wait (``handover_timeout``) until every snapshot is acknowledged;
2. move the clients (``server.ring_moves``, ``ring_move_rate`` per second), bounded by
   ``handover_timeout``;
3. *seal*: publications of the moving channels hold from now on; wait until none is
   still being sequenced, then until every receiver acknowledged the top of each
   channel in a message marked ``sealed``. Not bounded: returning early would let the
   ring be made final with a receiver missing acknowledged publications. A receiver
   that dies changes the ring, which restarts the hand-over.

The *receiver*'s side (``POST /node/handover``, the replicas and which of them are
complete) is ``server.handover_receiver``'s; ``Handover`` owns it as ``receiver``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import msgspec

from tidings.brokers.memory import random_epoch
from tidings.core.backoff import Backoff
from tidings.core.channel import ChannelName
from tidings.core.dedupe import RememberedKey
from tidings.core.handover import RingRecord, Sequence, Transition
from tidings.core.publication import Position, parse_position
from tidings.core.recovery import Replay
from tidings.core.ring_gains import TakeoverStep, decide_takeover
from tidings.core.routing import FollowingPlacement
from tidings.errors import TidingsError
from tidings.server.forwarding import OwnerLink, Parts
from tidings.server.handover_broker import HandoverBroker
from tidings.server.handover_messages import HandoverAnswer, next_message, snapshot_keys
from tidings.server.handover_receiver import HANDOVER_PATH, HandoverReceiver
from tidings.server.handover_sending import HandoverSender
from tidings.server.ring_moves import RingMover

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pump:
    """One moving channel's stream to its receiver."""

    receiver: str
    dirty: asyncio.Event = field(default_factory=asyncio.Event)
    snapshot_acked: asyncio.Event = field(default_factory=asyncio.Event)
    sealed_acked: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class _Run:
    """A giver's hand-over in one version of the ring."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.pumps: dict[ChannelName, _Pump] = {}
        self.sealed = False
        self.changed = asyncio.Event()  # a pump started or acknowledged something

    async def wait_all(self, which: Callable[[_Pump], asyncio.Event]) -> None:
        while True:
            self.changed.clear()
            waiting = [
                which(pump).wait() for pump in self.pumps.values() if not which(pump).is_set()
            ]
            if not waiting:
                return
            changed = asyncio.ensure_future(self.changed.wait())
            pending = [asyncio.ensure_future(w) for w in waiting]
            try:
                await asyncio.wait([changed, *pending], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for future in (changed, *pending):
                    future.cancel()


class Handover:
    """One node's part in transitions of the ring; see the module docstring."""

    def __init__(
        self,
        node_id: str,
        placement: FollowingPlacement,
        broker: HandoverBroker,
        link: Callable[[], OwnerLink],
        mover: RingMover,
        *,
        timeout_s: float,
        release: Callable[[Callable[[str], bool]], Awaitable[None]] | None = None,
    ) -> None:
        """``release`` is awaited once sealed, with the keys this node gives away: the
        application's per-key state of them is saved (``KeyOwnership.release_where``)
        before the node says it handed them over."""
        self._node_id = node_id
        self._release = release
        self._placement = placement
        self._broker = broker
        self._link = link
        self._mover = mover
        self._timeout_s = timeout_s
        self._ring_changed = asyncio.Event()
        self._ready = asyncio.Event()
        self._ready.set()
        self._settling = 0  # the latest settle's number: only it opens the gate
        self._run: _Run | None = None
        self._senders: dict[str, HandoverSender] = {}  # by receiver
        broker.listen(self)
        self.receiver = HandoverReceiver(node_id, placement, broker, link, self.refresh)
        """The receiving side: ``POST /node/handover``."""
        self.refresh_ring: Callable[[], Awaitable[None]] | None = None
        """Reads the ring in etcd again (the node's ``RingMember.refresh``), set once made."""

    # -- the ring ------------------------------------------------------------------------

    def receive_ring(self, ring: RingRecord) -> None:
        """Route by ``ring`` from now on; renew the epochs of channels this node now
        sequences without a complete replica before sequencing anything."""
        before = self._placement.transition
        self._placement.receive_ring(ring.nodes, ring.version, ring.previous)
        self._ring_changed.set()
        self._ring_changed = asyncio.Event()
        self._settling += 1
        self._ready.clear()
        asyncio.get_running_loop().create_task(
            self._settle(before, self._settling), name=f"settle ring v{ring.version}"
        )

    async def _settle(self, before: Transition | None, number: int) -> None:
        try:
            renewed = 0
            for channel in await self._broker.held_channels():
                if number != self._settling:
                    return  # a newer ring settles again
                if self._must_renew(before, channel):
                    await self._broker.adopt(channel, random_epoch(), [], top=0)
                    renewed += 1
            if renewed:
                logger.info("%d channels whose sequencer is gone start a new epoch here", renewed)
        except Exception:  # a bug or the store failing: sequencing must not stay shut
            logger.exception("renewing the epochs of channels taken over failed")
        finally:
            if number == self._settling:
                self._ready.set()

    def _must_renew(self, before: Transition | None, channel: ChannelName) -> bool:
        step = decide_takeover(
            before,
            self._placement.transition,
            self._node_id,
            self._placement.key_of(channel),
            handed_whole=self.receiver.holds_whole(channel),
            empty_ring_gains=True,
        )
        self.receiver.taken_over(channel, step)
        return step is TakeoverStep.RENEW

    async def sequencing_ready(self) -> None:
        """Wait until channels taken over from a dead sequencer have new epochs."""
        await self._ready.wait()

    async def wait_ring_after(self, version: int, timeout_s: float) -> bool:
        """Wait until a ring newer than ``version`` is known; whether it came in time."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._placement.ring_version <= version:
                    await self._ring_changed.wait()
        except TimeoutError:
            return False
        return True

    async def refresh(self) -> None:
        """Read the ring in etcd again (the node's ``RingMember.refresh``)."""
        refresh = self.refresh_ring
        if refresh is None:
            return
        try:
            await refresh()
        except TidingsError as exc:
            logger.warning("reading the ring again failed: %s", exc)

    # -- giver ----------------------------------------------------------------------------

    def published(self, channel: ChannelName, receiver: str) -> None:
        """A publication of ``channel`` given to ``receiver`` was sequenced: send it on
        (starting its pump if it is the channel's first in this transition)."""
        run = self._run
        if run is None or run.version != self._placement.ring_version:
            return  # the run of this version reads the store's channels when it starts
        pump = run.pumps.get(channel)
        if pump is None:
            self._start_pump(run, channel, receiver)
        else:
            pump.dirty.set()

    async def hand_over(self, ring: RingRecord) -> None:
        """Hand this node's moving channels over in the transition ``ring`` (the steps
        of the module docstring); return once every receiver holds them whole."""
        await self._ready.wait()
        run = _Run(ring.version)
        self._run = run
        # Senders anew: a receiver taking one message a call (of the previous release)
        # may have been upgraded since; the old ones' calls end on their own.
        self._senders = {}
        try:
            for channel in await self._broker.held_channels():
                role = self._placement.publishing_role(channel)
                moving = isinstance(role, Sequence) and role.copy_to is not None
                if moving and channel not in run.pumps:
                    assert isinstance(role, Sequence)
                    assert role.copy_to is not None
                    self._start_pump(run, channel, role.copy_to)
            if run.pumps:
                logger.info(
                    "handing %d channels over in ring version %d", len(run.pumps), ring.version
                )
            await self._bounded(run.wait_all(lambda pump: pump.snapshot_acked), "snapshots")
            self._mover.receive_ring()
            await self._bounded(self._mover.wait_moved(), "moving clients")
            self._placement.seal()
            transition = self._placement.transition
            if self._release is not None and transition is not None:
                node = self._node_id
                await self._release(
                    lambda key: transition.moves(key) and transition.old_owner(key) == node
                )
            await self._broker.wait_sequenced()
            run.sealed = True
            for pump in run.pumps.values():
                pump.dirty.set()
            await run.wait_all(lambda pump: pump.sealed_acked)
            logger.info("handed %d channels over in ring version %d", len(run.pumps), ring.version)
        finally:
            self._run = None
            for pump in run.pumps.values():
                if pump.task is not None:
                    pump.task.cancel()

    async def _bounded(self, step: Awaitable[None], what: str) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await step
        except TimeoutError:
            logger.warning(
                "hand-over: %s took longer than handover_timeout (%g s); going on",
                what,
                self._timeout_s,
            )

    def _start_pump(self, run: _Run, channel: ChannelName, receiver: str) -> None:
        pump = _Pump(receiver)
        run.pumps[channel] = pump
        pump.task = asyncio.get_running_loop().create_task(
            self._pump(run, channel, pump), name=f"hand-over {channel} to {receiver}"
        )
        run.changed.set()

    async def _pump(self, run: _Run, channel: ChannelName, pump: _Pump) -> None:
        """Send ``channel`` to its receiver until the run ends (cancelled)."""
        held: Position | None = None
        keys_left: tuple[RememberedKey, ...] = ()  # of the last snapshot, not acknowledged yet
        # The receiver holds every key of the channel up to here, acknowledged in this
        # run: a fresh snapshot sends only the keys above it (``snapshot_keys``).
        keys_held: Position | None = None
        backoff = Backoff(base_s=0.05, cap_s=2.0, uniform=random.uniform)
        while True:
            pump.dirty.clear()
            sealed = run.sealed
            snapshot = held is None
            read = await self._broker.history(channel, held)
            if not snapshot and not isinstance(read.recovery, Replay):
                held = None  # evicted from this node's history meanwhile: a snapshot again
                continue
            publications = read.recovery.publications if isinstance(read.recovery, Replay) else ()
            head = read.head
            if snapshot:
                # Read after the history: a key evicted in between is still in the window.
                window = await self._broker.remembered_keys(channel)
                keys_left = snapshot_keys(window, publications, head, keys_held)
            if snapshot or head != held or keys_left or (sealed and not pump.sealed_acked.is_set()):
                raw, sent_keys = next_message(
                    self._node_id,
                    (channel, head),
                    publications,
                    keys_left,
                    snapshot=snapshot,
                    sealed=sealed,
                )
                answer = await self._send_or_pause(run, channel, pump.receiver, raw, backoff)
                if answer is None:
                    continue
                if answer.resync:
                    # It lost what it acknowledged (or never had it): everything again.
                    held = keys_held = None
                    continue
                before, held = held, parse_position(answer.epoch, answer.offset)
                keys_left = keys_left[sent_keys:]
                if not keys_left:
                    # Every key up to what it holds came: the snapshot's below its
                    # publications, and those of the publications themselves.
                    keys_held = held
                if snapshot:
                    self._placement.receiver_holds(channel)
                    pump.snapshot_acked.set()
                if sealed and held == head and not keys_left:
                    pump.sealed_acked.set()
                run.changed.set()
                if held != head:
                    # It holds less than was sent (it restarted past a hole): again, after
                    # a pause if it made no progress.
                    if held == before:
                        await asyncio.sleep(backoff.next_delay_s())
                    continue
                backoff.reset()
                if keys_left:
                    continue  # more of the snapshot's keys to send
            await pump.dirty.wait()

    async def _send_or_pause(
        self, run: _Run, channel: ChannelName, receiver: str, raw: bytes, backoff: Backoff
    ) -> HandoverAnswer | None:
        """Send one message of ``channel``; return the answer, or ``None`` (to send
        again) after a pause if it failed or the receiver knows another ring (this run
        then ends with it)."""
        try:
            answer = await self._send(receiver, channel, raw, run.version)
        except (TidingsError, msgspec.DecodeError) as exc:
            delay_s = backoff.next_delay_s()
            logger.warning(
                "handing %s to %s failed (%s); again in %.1f s", channel, receiver, exc, delay_s
            )
            await asyncio.sleep(delay_s)
            return None
        if answer is None:
            await asyncio.sleep(backoff.next_delay_s())
        return answer

    async def _send(
        self, receiver: str, channel: ChannelName, raw: bytes, version: int
    ) -> HandoverAnswer | None:
        sender = self._senders.get(receiver)
        if sender is None:
            sender = HandoverSender(receiver, functools.partial(self._post, receiver))
            self._senders[receiver] = sender
        return await sender.send(channel, raw, version)

    async def _post(self, receiver: str, channel: ChannelName, body: bytes, version: int) -> Parts:
        url = self._placement.url_of(receiver)
        return await self._link().send(channel, url, ("POST", HANDOVER_PATH, body), version)
