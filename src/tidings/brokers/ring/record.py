"""The ring record in etcd (DESIGN.md "Consistent hashing mode"): its encoding, reading
it (alone, or with the live members), and changing it by compare-and-swap, planned
changes only from a settled ring.

I/O against etcd through ``etcd.EtcdGateway`` (reads, compare-and-swap transactions, and
watches of the ring key while a transition is under way); used by ``membership`` (a
node's own part) and by the CLI (``tidings ring status|join|leave``).

Theory of operation
-------------------
``<prefix>/ring`` (``/tidings/ring`` by default) holds ``{"version": n, "nodes": {id:
url}, "previous": {id: url} | null}``, the ring itself (``previous`` absent, as older
nodes wrote it, is null). It is changed only by compare-and-swap transactions: read it
with its revision, write the next version only if it is still at that revision, else
read again and retry (``change_ring``). Every change adds one to ``version``, so no two
rings share a version and none is lost to a concurrent writer. ``previous`` set means
the ring is *in transition* from ``previous`` to ``nodes`` (the hand-over of
docs/modes/hashing.md "Scaling"): the old owners still sequence the keys that move, and
copy them to the new owners.

Planned changes (a node joining or leaving on purpose, ``tidings ring join|leave``) are
made only from a settled ring (``previous`` null): ``{v+1, nodes ± node, previous:
nodes}``. A change asked while a transition is under way waits for it to end (a watch
of the ring key), bounded by a timeout (a node's ``settle_timeout_s``). A first node,
or the last one leaving, has no one to hand to: its change is settled at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

import msgspec

from tidings.brokers.ring.etcd import EtcdError, EtcdGateway, Unchanged
from tidings.core.handover import RingRecord, TransitionUnderWay

DEFAULT_PREFIX: Final = "/tidings/ring"
# A transaction lost to a concurrent writer is retried at once, this many times at most.
MAX_TRANSACTION_ATTEMPTS: Final = 100


class _RingJson(msgspec.Struct, omit_defaults=True):
    version: int
    nodes: dict[str, str]
    previous: dict[str, str] | None = None


def encode_ring(state: RingRecord) -> bytes:
    """The ring key's value (``previous`` left out when null)."""
    previous = None if state.previous is None else dict(state.previous)
    return msgspec.json.encode(_RingJson(state.version, dict(state.nodes), previous))


def decode_ring(value: bytes) -> RingRecord:
    """Read the ring key's value (one without ``previous`` is settled).

    Raises:
        EtcdError: it is not a ring (someone else wrote the key).
    """
    try:
        ring = msgspec.json.decode(value, type=_RingJson)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise EtcdError(f"the ring key holds something that is not a ring: {exc}") from exc
    return RingRecord(ring.version, ring.nodes, ring.previous)


@dataclass(frozen=True, slots=True)
class RingView:
    """The ring in etcd as an operator sees it: the ring (version and nodes) and the
    members whose lease is alive (id to URL), which a joining node is before its place
    in the ring is written, and a dead one no longer is."""

    ring: RingRecord
    members: Mapping[str, str]


async def read_ring_view(gateway: EtcdGateway, prefix: str = DEFAULT_PREFIX) -> RingView:
    """Read the ring kept under ``prefix`` and its live members, in one read.

    Raises:
        EtcdError: etcd could not be reached, or answered something else than etcd would.
    """
    base = prefix.rstrip("/")
    members_prefix = f"{base}/members/"
    keys, _ = await gateway.get_prefix(base + "/")
    ring = RingRecord()
    members: dict[str, str] = {}
    for kv in keys:
        if kv.key == f"{base}/ring":
            ring = decode_ring(kv.value)
        elif kv.key.startswith(members_prefix):
            members[kv.key.removeprefix(members_prefix)] = kv.value.decode(errors="replace")
    return RingView(ring, members)


async def read_ring(gateway: EtcdGateway, prefix: str) -> tuple[RingRecord, int]:
    """Return the ring under ``prefix`` and the revision of its key (0: no ring yet)."""
    found = await gateway.get(f"{prefix.rstrip('/')}/ring")
    if found is None:
        return RingRecord(), 0
    return decode_ring(found.value), found.mod_revision


async def change_ring(
    gateway: EtcdGateway,
    prefix: str,
    change: Callable[[RingRecord], RingRecord],
    learn: Callable[[RingRecord], None],
    *,
    absent_member: str | None = None,
) -> RingRecord:
    """Apply ``change`` to the ring under ``prefix`` by compare-and-swap; return the ring
    after, which ``learn`` is given too (but not a ring left as it is for a member back).

    ``change`` returns the ring it is given when it needs no change (a concurrent
    writer may have made it).
    ``absent_member``: also require that member key to be absent (removing a dead
    node that may have come back).

    Raises:
        EtcdError: etcd failed, or the ring kept changing under every attempt.
    """
    base = prefix.rstrip("/")
    ring_key = f"{base}/ring"
    member_key = None if absent_member is None else f"{base}/members/{absent_member}"
    for _ in range(MAX_TRANSACTION_ATTEMPTS):
        ring, revision = await read_ring(gateway, base)
        wanted = change(ring)
        if wanted is ring:
            learn(ring)
            return ring
        conditions = [Unchanged(ring_key, revision)]
        if member_key is not None:
            conditions.append(Unchanged(member_key, 0))
        if await gateway.transact(conditions, {ring_key: encode_ring(wanted)}):
            learn(wanted)
            return wanted
        if member_key is not None and await gateway.get(member_key):
            return ring  # the node is back: it stays
    raise EtcdError(
        f"the ring kept changing under {MAX_TRANSACTION_ATTEMPTS} attempts to change it"
    )


async def change_planned_ring(
    gateway: EtcdGateway,
    prefix: str,
    change: Callable[[RingRecord], RingRecord],
    *,
    timeout_s: float,
) -> RingRecord:
    """Apply a planned ``change`` (``RingRecord.joined`` or ``left``, from a node or the
    CLI) to the ring under ``prefix`` by compare-and-swap, only from a settled ring:
    while a transition is under way (``change`` raises ``TransitionUnderWay``), wait for
    the ring key to change (a watch) and look again. Return the ring after (the one read
    if ``change`` leaves it as it is).

    Raises:
        EtcdError: etcd failed, or no settled ring came within ``timeout_s``.
    """
    key = f"{prefix.rstrip('/')}/ring"
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                found = await gateway.get(key)
                ring = RingRecord() if found is None else decode_ring(found.value)
                revision = 0 if found is None else found.mod_revision
                try:
                    wanted = change(ring)
                except TransitionUnderWay:
                    await _wait_changed(gateway, key, revision)
                    continue
                if wanted is ring:
                    return ring
                if await gateway.transact([Unchanged(key, revision)], {key: encode_ring(wanted)}):
                    return wanted
    except TimeoutError:
        raise EtcdError(
            f"a transition of the ring was still under way after {timeout_s:g} s; "
            "the change was not made (see tidings ring status)"
        ) from None


async def wait_settled(gateway: EtcdGateway, prefix: str, timeout_s: float) -> RingRecord:
    """Wait until the ring under ``prefix`` is not in transition; return it.

    Raises:
        EtcdError: etcd failed, or the ring was still in transition after ``timeout_s``.
    """
    key = f"{prefix.rstrip('/')}/ring"
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                found = await gateway.get(key)
                ring = RingRecord() if found is None else decode_ring(found.value)
                if not ring.in_transition:
                    return ring
                assert found is not None  # a ring in transition was written
                await _wait_changed(gateway, key, found.mod_revision)
    except TimeoutError:
        raise EtcdError(
            f"the ring was still handing channels over after {timeout_s:g} s "
            "(see tidings ring status)"
        ) from None


async def _wait_changed(gateway: EtcdGateway, key: str, revision: int) -> None:
    """Return once ``key`` changed after ``revision``."""
    async for events in gateway.watch(key, revision + 1):
        if any(event.key == key for event in events):
            return
