"""A node's membership of the hash ring, kept in etcd (DESIGN.md "Consistent hashing mode").

I/O against etcd through ``etcd.EtcdGateway``; one keep-alive task and one watch task
per joined node. What the ring is made of (which nodes, at which version) lives in
etcd alone; every node reads it from there and is told of each change.

Theory of operation
-------------------
Keys, under a prefix (``/tidings/ring`` by default):

* ``<prefix>/members/<node_id>``: the node's base URL, attached to the node's *lease*.
  The node keeps its lease alive (every third of its time to live); a node that stops
  (crash, partition) loses it after ``ttl_s``, and etcd deletes the key. The node
  tracks until when its lease surely lives (``core.lease_deadline``: from the time each
  keep-alive that succeeded was *sent*, less a margin): past that it is *unconfirmed*
  (``is_confirmed``) and must not sequence its keys, for the others may be about to.
  A keep-alive that fails is tried again sooner (``RETRY_FRACTION``), each bounded by
  ``KEEP_ALIVE_TIMEOUT_FRACTION`` of the lease, so that a short outage of etcd does
  not cost the lease.
* ``<prefix>/ring``: the ring record (which nodes, at which version, and in a
  transition the nodes it moves from), changed only by compare-and-swap transactions;
  its encoding and the planned changes made to it are ``record``'s.
* ``<prefix>/handed/<v>/<node_id>``: a giver's word that it handed over in the
  transition of version ``v``; finalizing on them is ``transition``'s.

Joining: grant a lease, write the member key on it, then (unless ``enter`` is false: a
node waiting for ``tidings ring join``) add the node to the ring. Leaving: take the node
out of the ring, hand over, wait for the ring to be final, then revoke the lease. A
dead node: every node watches the prefix; when a member key is deleted, a watcher
removes that node from ``nodes`` and ``previous`` at once, in or out of a transition,
in a transaction that also requires the member key to be still absent (a node that
came straight back is not removed). Several watchers race; the transaction lets one
win, and the others find the node already gone. After (re)starting its watch, a node
also reconciles: it removes every ring node that has no member key, so a death missed
while the watch was down is not missed for good.

A node whose own lease expired (it was cut off for longer than ``ttl_s``) has been
removed by the others, which have sequenced its keys since; once it reaches etcd again
it tells ``on_lease_lost`` (the node starts its channels in a new epoch: what it holds
of them is stale) and joins anew. While etcd cannot be reached at all, nothing
changes: no node can write the ring, and each keeps the last one it saw (no node is
removed, none rejoins, until etcd answers again).

Each ring it learns is handed to ``on_ring`` (the node's placement, then the moves of
its connections: ``server.routing``, ``server.ring_moves``). In a transition where this
node gives keys, ``hand_over`` runs (the node's hand-over: ``server.handover``); when it
returns, the node writes its ``handed`` key. A newer version cancels a hand-over under
way and starts the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final

from tidings.brokers.ring.etcd import EtcdError, EtcdGateway
from tidings.brokers.ring.record import (
    DEFAULT_PREFIX,
    MAX_TRANSACTION_ATTEMPTS,
    change_planned_ring,
    change_ring,
    decode_ring,
    read_ring,
)
from tidings.brokers.ring.transition import finalize_transition
from tidings.core.backoff import Backoff
from tidings.core.handover import RingRecord
from tidings.core.lease_deadline import LeaseDeadline

logger = logging.getLogger(__name__)

DEFAULT_TTL_S: Final = 10
# Keep-alives: one every third of the lease; after a failure, again after a tenth; each
# waits for an answer a sixth of the lease at most (a member that does not answer by
# then is left for the next, ``etcd.EtcdGateway``).
RENEW_FRACTION: Final = 1 / 3
RETRY_FRACTION: Final = 1 / 10
KEEP_ALIVE_TIMEOUT_FRACTION: Final = 1 / 6
# How long a planned change waits for a transition under way to end.
DEFAULT_SETTLE_TIMEOUT_S: Final = 60.0


def _has(ring: RingRecord, node_id: str) -> bool:
    """Whether ``node_id`` is in ``ring``'s nodes or previous nodes."""
    return node_id in ring.nodes or (ring.previous is not None and node_id in ring.previous)


# What a giver does in a transition (hand every key it gives over); awaited before its
# ``handed`` key is written. Cancelled when a newer version of the ring arrives.
HandOver = Callable[[RingRecord], Awaitable[None]]


async def _nothing_to_renew() -> None:
    """A node that holds nothing when its lease is lost."""


async def _nothing_to_hand(_ring: RingRecord) -> None:
    """A node with no store to give (tests of membership alone)."""


class Membership:
    """One node's membership of the ring; ``join``, then ``leave`` (or ``stop``)."""

    def __init__(
        self,
        gateway: EtcdGateway,
        node_id: str,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: int = DEFAULT_TTL_S,
        on_ring: Callable[[RingRecord], None] = lambda _state: None,
        hand_over: HandOver = _nothing_to_hand,
        settle_timeout_s: float = DEFAULT_SETTLE_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        on_lease_lost: Callable[[], Awaitable[None]] = _nothing_to_renew,
    ) -> None:
        """Be ``node_id``, reached at ``url``, in the ring kept under ``prefix``.

        Args:
            gateway: the etcd endpoint (closed by the caller).
            node_id: this node's id (``node_id`` of its settings).
            url: this node's base URL (its ``advertised_url``).
            prefix: where the ring lives in etcd: nodes of one ring share it.
            ttl_s: how long the node stays a member without reaching etcd (at least 2).
            on_ring: called with each new version of the ring this node learns.
            hand_over: run in each transition in which this node gives keys; once it
                returns, the node's ``handed`` key is written.
            settle_timeout_s: how long a planned change waits for a transition under
                way to end, and a leaving node for the ring without it to be final.
            clock: a monotonic clock, for the lease's deadline.
            on_lease_lost: awaited when etcd says this node's lease has expired, before
                it joins again: the node stays unconfirmed (fenced) until it returns.
        """
        if ttl_s < 2:
            raise ValueError(f"ttl_s must be at least 2 seconds, got {ttl_s}")
        self._etcd = gateway
        self.node_id = node_id
        self.url = url
        self._prefix = prefix.rstrip("/")
        self._ring_key = f"{self._prefix}/ring"
        self._members = f"{self._prefix}/members/"
        self._handed = f"{self._prefix}/handed/"
        self._ttl_s = ttl_s
        self._on_ring = on_ring
        self._hand_over = hand_over
        self._settle_timeout_s = settle_timeout_s
        self.ring = RingRecord()
        """The latest version of the ring this node has seen."""
        self._lease: int | None = None
        self._clock = clock
        self._on_lease_lost = on_lease_lost
        self.lease = LeaseDeadline()
        """Until when this node's lease surely lives (times of ``clock``)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._handing: asyncio.Task[None] | None = None
        self._ring_changed = asyncio.Event()
        self._backoff = Backoff(base_s=0.1, cap_s=float(ttl_s) / 2, uniform=random.uniform)

    def is_confirmed(self) -> bool:
        """Whether this node's lease surely lives now: it may sequence its keys."""
        return self.lease.is_confirmed(self._clock())

    # -- lifecycle ---------------------------------------------------------------------

    async def join(self, *, enter: bool = True) -> None:
        """Become a member: lease, member key, place in the ring (a planned join, unless
        ``enter`` is false: the node then waits to be joined by ``tidings ring join``);
        then keep the lease alive and watch the ring until ``leave``.

        Raises:
            EtcdError: etcd could not be reached or refused, or a transition under way
                did not end within ``settle_timeout_s``.
        """
        await self._forget_earlier_self()
        await self._enter(enter=enter)
        self._tasks = [
            asyncio.create_task(self._keep_alive(), name=f"ring lease {self.node_id}"),
            asyncio.create_task(self._watch(), name=f"ring watch {self.node_id}"),
        ]
        if enter:
            logger.info("node %s joined the ring (version %d)", self.node_id, self.ring.version)
        else:
            logger.info("node %s is a member, waiting to be joined to the ring", self.node_id)

    async def leave(self) -> None:
        """Leave the ring (a planned leave: the node's keys are handed over to the
        others, bounded by ``settle_timeout_s``), then stop and revoke the lease."""
        try:
            await self.change_planned(lambda ring: ring.left(self.node_id))
            await self.wait_final(lambda ring: self.node_id not in ring.nodes)
        except EtcdError as exc:
            logger.warning("node %s could not hand over cleanly: %s", self.node_id, exc)
        await self._stop_tasks()
        try:
            if _has(self.ring, self.node_id):
                # Handing over did not end: out at once, as a crash would be.
                await self._change(lambda ring: ring.crashed(self.node_id))
            if self._lease is not None:
                await self._etcd.revoke(self._lease)
        except EtcdError as exc:
            # The lease expires by itself and the others remove the node then.
            logger.warning("node %s could not leave the ring cleanly: %s", self.node_id, exc)
        self._lease = None
        self.lease.lost()
        logger.info("node %s left the ring", self.node_id)

    async def stop(self) -> None:
        """Stop keeping the lease and watching, leaving etcd as it is: the others remove
        this node once its lease expires (what a crash looks like to them)."""
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        if self._handing is not None:
            tasks.append(self._handing)
            self._handing = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _forget_earlier_self(self) -> None:
        """Remove this node's id from the ring as a crash would, if it is still there.

        A node starting while its id is in the ring is a restart within its earlier
        incarnation's lease: that one died with whatever it held. Rejoining silently
        would let the receivers of a transition under way continue its epoch from
        copies it may not have finished (offsets given twice: found by the simulation,
        tests/simulation); removed first, its keys start new epochs.
        """
        ring, _ = await self.read_ring()
        if _has(ring, self.node_id):
            logger.warning(
                "node %s is still in the ring from before it restarted: removing that "
                "earlier incarnation first (its channels start new epochs)",
                self.node_id,
            )
            await self._change(lambda ring: ring.crashed(self.node_id))

    async def _enter(self, *, enter: bool = True) -> None:
        sent_s = self._clock()
        lease = await self._etcd.grant(self._ttl_s)
        await self._etcd.put(self._members + self.node_id, self.url.encode(), lease=lease)
        self._lease = lease  # a member from now on
        # etcd may grant more than asked (its minimum), never less: ttl_s is a floor.
        self.lease.renewed(sent_s, self._ttl_s)
        if enter:
            await self.change_planned(lambda ring: ring.joined(self.node_id, self.url))
        else:
            await self.refresh()

    # -- the ring, changed only in transactions ------------------------------------------

    async def read_ring(self) -> tuple[RingRecord, int]:
        """Return the ring in etcd and the revision of its key (0: no ring yet)."""
        return await read_ring(self._etcd, self._prefix)

    async def refresh(self) -> RingRecord:
        """Read the ring in etcd now (not waiting for the watch), take it if it is newer
        than the one known, and return the ring known.

        Raises:
            EtcdError: etcd could not be reached.
        """
        ring, _ = await self.read_ring()
        self._learn(ring)
        return self.ring

    async def change_planned(self, change: Callable[[RingRecord], RingRecord]) -> RingRecord:
        """Apply a planned ``change`` (a join or a leave) from a settled ring, waiting for
        a transition under way to end (``settle_timeout_s``); see ``change_planned_ring``.

        Raises:
            EtcdError: etcd failed, or the transition under way did not end in time.
        """
        ring = await change_planned_ring(
            self._etcd, self._prefix, change, timeout_s=self._settle_timeout_s
        )
        self._learn(ring)
        return ring

    async def wait_final(self, condition: Callable[[RingRecord], bool]) -> RingRecord:
        """Wait until the ring known is settled and meets ``condition`` (bounded by
        ``settle_timeout_s``); return it.

        Raises:
            EtcdError: it did not happen in time.
        """
        try:
            async with asyncio.timeout(self._settle_timeout_s):
                while self.ring.in_transition or not condition(self.ring):
                    self._ring_changed.clear()
                    await self._ring_changed.wait()
        except TimeoutError:
            raise EtcdError(
                f"the ring was not final within {self._settle_timeout_s:g} s "
                f"(version {self.ring.version} still in transition)"
            ) from None
        return self.ring

    async def _change(
        self,
        change: Callable[[RingRecord], RingRecord],
        *,
        absent_member: str | None = None,
    ) -> RingRecord:
        """Apply ``change`` to the ring in etcd by compare-and-swap (``record.change_ring``),
        learning the ring after; return it."""
        return await change_ring(
            self._etcd, self._prefix, change, self._learn, absent_member=absent_member
        )

    def _learn(self, ring: RingRecord) -> None:
        """Take a version of the ring read or written; tell ``on_ring`` if it is newer,
        and start handing over if this node gives keys in it."""
        if ring.version <= self.ring.version:
            return
        self.ring = ring
        self._ring_changed.set()
        if self._handing is not None:
            self._handing.cancel()  # its receivers may have changed: hand over anew
            self._handing = None
        self._on_ring(ring)
        previous = ring.previous
        if previous is not None and self.node_id in previous and self._lease is not None:
            self._handing = asyncio.get_running_loop().create_task(
                self._hand_over_in(ring), name=f"hand-over {self.node_id} v{ring.version}"
            )

    async def _hand_over_in(self, ring: RingRecord) -> None:
        """Hand over this node's keys in the transition ``ring``, then say so in etcd."""
        try:
            await self._hand_over(ring)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug; the leave's bound, or a crash removal, ends the transition
            logger.exception("handing over in ring version %d failed", ring.version)
            return
        lease = self._lease
        for attempt in range(MAX_TRANSACTION_ATTEMPTS):
            try:
                await self._etcd.put(
                    f"{self._handed}{ring.version}/{self.node_id}", b"1", lease=lease
                )
                logger.info(
                    "node %s handed its keys over (ring version %d)", self.node_id, ring.version
                )
                await self._try_finalize()
                return
            except EtcdError as exc:
                delay_s = self._backoff.next_delay_s()
                logger.warning(
                    "node %s could not say it handed over (%s); again in %.1f s (%d)",
                    self.node_id,
                    exc,
                    delay_s,
                    attempt + 1,
                )
                await asyncio.sleep(delay_s)

    async def _try_finalize(self) -> None:
        """End the transition if every live giver handed over (``transition``)."""
        final = await finalize_transition(self._etcd, self._prefix, self._learn)
        if final is not None:
            logger.info(
                "ring version %d is final: %s", final.version, ", ".join(sorted(final.nodes))
            )
            self._learn(final)

    async def _remove_dead(self, node_id: str) -> None:
        if node_id == self.node_id or not _has(self.ring, node_id):
            return
        ring = await self._change(lambda ring: ring.crashed(node_id), absent_member=node_id)
        if not _has(ring, node_id):
            logger.info("node %s left the ring (its lease expired)", node_id)

    async def _reconcile(self) -> int:
        """Read every member and the ring; remove ring nodes that have no member key.
        Return the revision read (the watch starts after it)."""
        keys, revision = await self._etcd.get_prefix(self._prefix + "/")
        members = {
            kv.key.removeprefix(self._members) for kv in keys if kv.key.startswith(self._members)
        }
        for kv in keys:
            if kv.key == self._ring_key:
                self._learn(decode_ring(kv.value))
        ring = self.ring
        known = {*ring.nodes, *(ring.previous or {})}
        for node_id in sorted(node for node in known if node not in members):
            await self._remove_dead(node_id)
        await self._try_finalize()
        return revision

    # -- background tasks ----------------------------------------------------------------

    async def _keep_alive(self) -> None:
        delay_s = self._ttl_s * RENEW_FRACTION
        while True:
            await asyncio.sleep(delay_s)
            delay_s = self._ttl_s * RETRY_FRACTION  # unless this one succeeds
            sent_s = self._clock()
            try:
                assert self._lease is not None  # granted by join
                ttl_s = await self._etcd.keep_alive(
                    self._lease, timeout_s=self._ttl_s * KEEP_ALIVE_TIMEOUT_FRACTION
                )
                if ttl_s > 0:
                    if self.lease.unreachable_since_s is not None:
                        logger.info("node %s reached etcd again; its lease lives", self.node_id)
                    self.lease.renewed(sent_s, ttl_s)
                    delay_s = self._ttl_s * RENEW_FRACTION
                    continue
                # Cut off past the lease's life: the others removed this node. Back in
                # (into the ring too if it was in it: not if it had been asked out).
                logger.warning("node %s lost its lease; joining the ring again", self.node_id)
                self.lease.lost()
                # Unconfirmed until it returns: the node restarts its stale channels
                # before it may sequence them again (``server.ring_node``).
                await self._on_lease_lost()
                await self._enter(enter=self.node_id in self.ring.nodes)
                delay_s = self._ttl_s * RENEW_FRACTION
            except EtcdError as exc:
                if self.lease.unreachable_since_s is None:
                    logger.warning("node %s could not renew its lease: %s", self.node_id, exc)
                self.lease.failed(self._clock())

    async def _watch(self) -> None:
        while True:
            try:
                revision = await self._reconcile()
                self._backoff.reset()
                async for events in self._etcd.watch(self._prefix + "/", revision + 1):
                    finalize = False
                    for event in events:
                        if event.key == self._ring_key and not event.deleted:
                            self._learn(decode_ring(event.value))
                        elif event.key.startswith(self._members) and event.deleted:
                            await self._remove_dead(event.key.removeprefix(self._members))
                            finalize = True
                        elif event.key.startswith(self._handed) and not event.deleted:
                            finalize = True
                    if finalize and self.ring.in_transition:
                        await self._try_finalize()
            except EtcdError as exc:
                delay_s = self._backoff.next_delay_s()
                logger.warning(
                    "ring watch of node %s failed (%s); again in %.1f s", self.node_id, exc, delay_s
                )
                await asyncio.sleep(delay_s)
