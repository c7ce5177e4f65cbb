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
* ``<prefix>/ring``: ``{"version": n, "nodes": {id: url}}``, the ring itself. It is
  changed only by compare-and-swap transactions: read it with its revision, write the
  next version only if it is still at that revision, else read again and retry. Every
  change adds one to ``version``, so no two rings share a version and none is lost to
  a concurrent writer.

Joining: grant a lease, write the member key on it, then add the node to the ring.
Leaving: take the node out of the ring, then revoke the lease. A dead node: every node
watches the prefix; when a member key is deleted, a watcher removes that node from the
ring in a transaction that also requires the member key to be still absent (a node
that came straight back is not removed). Several watchers race; the transaction lets
one win, and the others find the node already gone. After (re)starting its watch, a
node also reconciles: it removes every ring node that has no member key, so a death
missed while the watch was down is not missed for good.

A node whose own lease expired (it was cut off for longer than ``ttl_s``) has been
removed by the others, which have sequenced its keys since; once it reaches etcd again
it tells ``on_lease_lost`` (the node starts its channels in a new epoch: what it holds
of them is stale) and joins anew. While etcd cannot be reached at all, nothing
changes: no node can write the ring, and each keeps the last one it saw (no node is
removed, none rejoins, until etcd answers again).

Each ring it learns is handed to ``on_ring`` (the node's placement, then the moves of
its connections: ``server.routing``, ``server.ring_moves``). What this does not do yet:
hand channels over between owners when the ring changes (the transition of DESIGN.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec

from tidings.brokers.ring.etcd import EtcdError, EtcdGateway, Unchanged
from tidings.core.backoff import Backoff
from tidings.core.lease_deadline import LeaseDeadline

logger = logging.getLogger(__name__)

DEFAULT_PREFIX: Final = "/tidings/ring"
DEFAULT_TTL_S: Final = 10
# A transaction lost to a concurrent writer is retried at once, this many times at most.
MAX_TRANSACTION_ATTEMPTS: Final = 100
# Keep-alives: one every third of the lease; after a failure, again after a tenth; each
# waits for an answer a sixth of the lease at most (a member that does not answer by
# then is left for the next, ``etcd.EtcdGateway``).
RENEW_FRACTION: Final = 1 / 3
RETRY_FRACTION: Final = 1 / 10
KEEP_ALIVE_TIMEOUT_FRACTION: Final = 1 / 6


@dataclass(frozen=True, slots=True)
class RingState:
    """A version of the ring: its nodes (id to base URL). Version 0 is the empty ring
    before any node joined."""

    version: int = 0
    nodes: Mapping[str, str] = field(default_factory=dict)

    def with_node(self, node_id: str, url: str) -> RingState:
        """The next version, with ``node_id`` at ``url``."""
        return RingState(self.version + 1, {**self.nodes, node_id: url})

    def without_node(self, node_id: str) -> RingState:
        """The next version, without ``node_id``."""
        nodes = {node: url for node, url in self.nodes.items() if node != node_id}
        return RingState(self.version + 1, nodes)


class _RingJson(msgspec.Struct):
    version: int
    nodes: dict[str, str]


def encode_ring(state: RingState) -> bytes:
    """The ring key's value."""
    return msgspec.json.encode(_RingJson(state.version, dict(state.nodes)))


def decode_ring(value: bytes) -> RingState:
    """Read the ring key's value.

    Raises:
        EtcdError: it is not a ring (someone else wrote the key).
    """
    try:
        ring = msgspec.json.decode(value, type=_RingJson)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EtcdError(f"the ring key holds something that is not a ring: {exc}") from exc
    return RingState(ring.version, ring.nodes)


@dataclass(frozen=True, slots=True)
class RingView:
    """The ring in etcd as an operator sees it: the ring (version and nodes) and the
    members whose lease is alive (id to URL), which a joining node is before its place
    in the ring is written, and a dead one no longer is."""

    ring: RingState
    members: Mapping[str, str]


async def read_ring_view(gateway: EtcdGateway, prefix: str = DEFAULT_PREFIX) -> RingView:
    """Read the ring kept under ``prefix`` and its live members, in one read.

    Raises:
        EtcdError: etcd could not be reached, or answered something else than etcd would.
    """
    base = prefix.rstrip("/")
    members_prefix = f"{base}/members/"
    keys, _ = await gateway.get_prefix(base + "/")
    ring = RingState()
    members: dict[str, str] = {}
    for kv in keys:
        if kv.key == f"{base}/ring":
            ring = decode_ring(kv.value)
        elif kv.key.startswith(members_prefix):
            members[kv.key.removeprefix(members_prefix)] = kv.value.decode(errors="replace")
    return RingView(ring, members)


class Membership:
    """One node's membership of the ring; ``join``, then ``leave``."""

    def __init__(
        self,
        gateway: EtcdGateway,
        node_id: str,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        ttl_s: int = DEFAULT_TTL_S,
        on_ring: Callable[[RingState], None] = lambda _state: None,
        clock: Callable[[], float] = time.monotonic,
        on_lease_lost: Callable[[], None] = lambda: None,
    ) -> None:
        """Be ``node_id``, reached at ``url``, in the ring kept under ``prefix``.

        Args:
            gateway: the etcd endpoint (closed by the caller).
            node_id: this node's id (``node_id`` of its settings).
            url: this node's base URL (its ``advertised_url``).
            prefix: where the ring lives in etcd: nodes of one ring share it.
            ttl_s: how long the node stays a member without reaching etcd (at least 2).
            on_ring: called with each new version of the ring this node learns.
            clock: a monotonic clock, for the lease's deadline.
            on_lease_lost: called when etcd says this node's lease has expired, before
                it joins again.
        """
        if ttl_s < 2:
            raise ValueError(f"ttl_s must be at least 2 seconds, got {ttl_s}")
        self._etcd = gateway
        self.node_id = node_id
        self.url = url
        self._prefix = prefix.rstrip("/")
        self._ring_key = f"{self._prefix}/ring"
        self._members = f"{self._prefix}/members/"
        self._ttl_s = ttl_s
        self._on_ring = on_ring
        self.ring = RingState()
        """The latest version of the ring this node has seen."""
        self._lease: int | None = None
        self._clock = clock
        self._on_lease_lost = on_lease_lost
        self.lease = LeaseDeadline()
        """Until when this node's lease surely lives (times of ``clock``)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._backoff = Backoff(base_s=0.1, cap_s=float(ttl_s) / 2, uniform=random.uniform)

    def is_confirmed(self) -> bool:
        """Whether this node's lease surely lives now: it may sequence its keys."""
        return self.lease.is_confirmed(self._clock())

    # -- lifecycle ---------------------------------------------------------------------

    async def join(self) -> None:
        """Become a member: lease, member key, place in the ring; then keep the lease
        alive and watch the ring until ``leave``.

        Raises:
            EtcdError: etcd could not be reached or refused.
        """
        await self._enter()
        self._tasks = [
            asyncio.create_task(self._keep_alive(), name=f"ring lease {self.node_id}"),
            asyncio.create_task(self._watch(), name=f"ring watch {self.node_id}"),
        ]
        logger.info("node %s joined the ring (version %d)", self.node_id, self.ring.version)

    async def leave(self) -> None:
        """Leave the ring (a planned leave: the node is taken out at once) and stop."""
        await self._stop_tasks()
        try:
            await self._change(lambda ring: ring.without_node(self.node_id))
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
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _enter(self) -> None:
        sent_s = self._clock()
        lease = await self._etcd.grant(self._ttl_s)
        await self._etcd.put(self._members + self.node_id, self.url.encode(), lease=lease)
        await self._change(lambda ring: ring.with_node(self.node_id, self.url), needed=self._absent)
        self._lease = lease  # a member from now on
        # etcd may grant more than asked (its minimum), never less: ttl_s is a floor.
        self.lease.renewed(sent_s, self._ttl_s)

    def _absent(self, ring: RingState) -> bool:
        return ring.nodes.get(self.node_id) != self.url

    # -- the ring, changed only in transactions ------------------------------------------

    async def read_ring(self) -> tuple[RingState, int]:
        """Return the ring in etcd and the revision of its key (0: no ring yet)."""
        found = await self._etcd.get(self._ring_key)
        if found is None:
            return RingState(), 0
        return decode_ring(found.value), found.mod_revision

    async def refresh(self) -> RingState:
        """Read the ring in etcd now (not waiting for the watch), take it if it is newer
        than the one known, and return the ring known.

        Raises:
            EtcdError: etcd could not be reached.
        """
        ring, _ = await self.read_ring()
        self._learn(ring)
        return self.ring

    async def _change(
        self,
        change: Callable[[RingState], RingState],
        *,
        needed: Callable[[RingState], bool] | None = None,
        absent_member: str | None = None,
    ) -> RingState:
        """Apply ``change`` to the ring in etcd by compare-and-swap; return the ring after.

        ``needed`` says whether the ring read still needs the change (a concurrent
        writer may have made it); by default, whether ``change`` alters its nodes.
        ``absent_member``: also require that member key to be absent (removing a dead
        node that may have come back).
        """
        for _ in range(MAX_TRANSACTION_ATTEMPTS):
            ring, revision = await self.read_ring()
            wanted = change(ring)
            if not (needed(ring) if needed else wanted.nodes != ring.nodes):
                self._learn(ring)
                return ring
            conditions = [Unchanged(self._ring_key, revision)]
            if absent_member is not None:
                conditions.append(Unchanged(self._members + absent_member, 0))
            if await self._etcd.transact(conditions, {self._ring_key: encode_ring(wanted)}):
                self._learn(wanted)
                return wanted
            if absent_member is not None and await self._etcd.get(self._members + absent_member):
                return ring  # the node is back: it stays
        raise EtcdError(
            f"the ring kept changing under {MAX_TRANSACTION_ATTEMPTS} attempts to change it"
        )

    def _learn(self, ring: RingState) -> None:
        """Take a version of the ring read or written; tell ``on_ring`` if it is newer."""
        if ring.version <= self.ring.version:
            return
        self.ring = ring
        self._on_ring(ring)

    async def _remove_dead(self, node_id: str) -> None:
        if node_id == self.node_id or node_id not in self.ring.nodes:
            return
        ring = await self._change(lambda ring: ring.without_node(node_id), absent_member=node_id)
        if node_id not in ring.nodes:
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
        for node_id in [node for node in self.ring.nodes if node not in members]:
            await self._remove_dead(node_id)
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
                # Cut off past the lease's life: the others removed this node. Back in.
                logger.warning("node %s lost its lease; joining the ring again", self.node_id)
                self.lease.lost()
                self._on_lease_lost()
                await self._enter()
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
                    for event in events:
                        if event.key == self._ring_key and not event.deleted:
                            self._learn(decode_ring(event.value))
                        elif event.key.startswith(self._members) and event.deleted:
                            await self._remove_dead(event.key.removeprefix(self._members))
            except EtcdError as exc:
                delay_s = self._backoff.next_delay_s()
                logger.warning(
                    "ring watch of node %s failed (%s); again in %.1f s", self.node_id, exc, delay_s
                )
                await asyncio.sleep(delay_s)
