"""The ``sqlite`` broker as a ring node's store: taking channels over, restarting them.

I/O: reads and writes the file through the broker's writer thread. A ring node asks its
store for more than a broker does (``AdoptingStore``, ``RenewingStore``); this module is
that part of ``SqliteBroker``, whose methods of those names call these functions.

Adopting (``AdoptingStore``). ``adopt`` takes a channel over from its old owner: it
restarts the channel's rows in the giver's epoch when it must
(``core.channel_log.plan_adoption``; past a hole in the epoch held, its key rows stay),
then writes the publications at the positions given through the same group commit as
publishes (``sqlite_commit``), so they are delivered once committed, and stores the
giver's idempotency keys beside them (those of publications no longer retained too),
kept for the dedupe window from their original times. ``held_channels`` and
``remembered_keys`` are what the handover reads to find and hand channels over.

Renewing (``RenewingStore``). ``start_new_epoch`` and ``restart_channels`` restart
channels another node sequenced meanwhile in new epochs, in the file: from the call on,
publishes and reads wait until it is committed (``sqlite_renewal``). An adoption that a
restart overtook fails rather than install or write what the restart replaced.

These are functions of the broker, not an object beside it: they load, sequence and
commit through the broker's own channels, group commit and restarts, so an object would
hold little but a reference back to the broker. They are its ring-node half, and so use
its private state; nothing else does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from tidings.brokers.sqlite_commit import LoadedChannel
from tidings.core.channel import ChannelName
from tidings.core.channel_log import ChannelLog, plan_adoption
from tidings.core.dedupe import DedupeWindow, RememberedKey
from tidings.core.publication import Position, Publication
from tidings.errors import BrokerError

if TYPE_CHECKING:
    from tidings.brokers.sqlite import SqliteBroker


async def held_channels(broker: SqliteBroker) -> list[ChannelName]:
    """Return every channel of the file, and those created since (``AdoptingStore``).

    Raises:
        BrokerError: the broker is not open, or reading the file failed.
    """
    writer = broker._check_open()
    stored = await writer.run(broker._store.channel_names, "listing channels")
    return sorted({*stored, *broker._channels})


async def remembered_keys(broker: SqliteBroker, channel: ChannelName) -> tuple[RememberedKey, ...]:
    """Return ``channel``'s committed keys inside the dedupe window, oldest first
    (``AdoptingStore``), those of publications trimmed from history too.

    Raises:
        BrokerError: the broker is not open, or loading the channel failed.
    """
    broker._check_open()
    state = await broker._channel(channel, create=False)
    return () if state is None else state.remembered_keys(broker._clock.now_ms())


async def adopt(
    broker: SqliteBroker,
    channel: ChannelName,
    epoch: str,
    publications: Sequence[Publication],
    *,
    top: int,
    keys: Sequence[RememberedKey],
) -> Position:
    """Store ``publications`` at their positions and remember ``keys``
    (``AdoptingStore.adopt``); return once they are committed (and delivered).

    Raises:
        ValueError: the publications are not consecutive and ending at ``top``.
        BrokerError: the broker is not open, storing failed, or the channel was
            restarted in a new epoch meanwhile (``restart_channels``; adopt again).
    """
    writer = broker._check_open()
    state = await broker._channel(channel, create=False)
    if state is not None and state.committed_offset != state.log.head_offset:
        # Its own publications first: the plan reads a settled head.
        await broker._group_commit.flush()
        state = await broker._channel(channel, create=False)
    generation = broker._renewals.generation  # none under way: ``_channel`` waited
    plan = plan_adoption(None if state is None else state.log.head, epoch, publications, top)
    if plan.restart_at is not None:
        # Past a hole in the same epoch the keys stay true, in the file and here: the
        # giver does not send them again (``Adoption.keeps_keys``).
        kept: tuple[RememberedKey, ...] = ()
        if state is not None and plan.keeps_keys:
            kept = state.remembered_keys(broker._clock.now_ms())
        restart = partial(broker._store.restart, channel, epoch, plan.restart_at)
        await writer.run(partial(restart, keep_keys=plan.keeps_keys), f"adopting channel {channel}")
        broker._check_open()
        _check_not_renewed(broker, channel, generation)
        history = broker._namespaces.options_for(channel).history
        log = ChannelLog(channel, epoch, history, broker._dedupe, plan.restart_at)
        earlier_keys = DedupeWindow(broker._dedupe)
        earlier_keys.adopt(kept)
        state = broker._channels[channel] = LoadedChannel(log, earlier_keys)
    assert state is not None  # plan_adoption restarts a channel not held
    if plan.publications:
        now_ms = broker._clock.now_ms()
        done: asyncio.Future[None] | None = None
        for publication in plan.publications:
            state.log.restore(publication, now_ms)
            done = broker._group_commit.enqueue(publication)
        assert done is not None
        await asyncio.shield(done)
    assert state.log.epoch == epoch  # plan_adoption restarts a channel of another epoch
    head = Position(epoch, plan.head)
    # At or below the committed head only: a publication stored later inserts its own
    # key row at its offset, which must not be taken already.
    adopted = [k for k in keys if k.offset <= head.offset]
    if adopted:
        _check_not_renewed(broker, channel, generation)
        await writer.run(
            partial(broker._store.remember_keys, channel, adopted),
            f"adopting the keys of channel {channel}",
        )
        broker._check_open()
        _check_not_renewed(broker, channel, generation)
        # Committed: now ``publish`` may answer from them (a failed batch since
        # reloads the channel from the file, keys and all).
        state = broker._channels.get(channel)
        if state is not None:
            state.earlier_keys.adopt(adopted)
    return head


def start_new_epoch(broker: SqliteBroker) -> asyncio.Task[None]:
    """Restart every channel empty, in one new epoch that becomes the database's
    (``RenewingStore``); from this call on, publishes and reads wait until it is
    committed (``sqlite_renewal``), which the task returned awaits.

    Raises:
        BrokerError: the broker is not open (the task raises it if storing failed).
    """
    broker._check_open()
    return broker._renewals.begin(partial(_renew_all, broker))


def restart_channels(
    broker: SqliteBroker, which: Callable[[ChannelName], bool]
) -> asyncio.Task[int]:
    """Restart each channel of the file for which ``which`` is true empty, each in a
    new epoch of its own (``RenewingStore``); from this call on, publishes and reads
    wait until it is committed, which the task returned (how many) awaits.

    Raises:
        BrokerError: the broker is not open (the task raises it if storing failed).
    """
    broker._check_open()
    return broker._renewals.begin(partial(_renew, broker, which))


async def _renew_all(broker: SqliteBroker) -> None:
    epoch = broker._epoch_factory()
    await broker._group_commit.flush()  # publications made before are in the old epoch
    writer = broker._check_open()
    await writer.run(partial(broker._store.renew_all, epoch), f"renewing epochs in {broker._file}")
    broker._epoch = epoch
    broker._channels.clear()


async def _renew(broker: SqliteBroker, which: Callable[[ChannelName], bool]) -> int:
    await broker._group_commit.flush()  # so every channel held is in the file
    writer = broker._check_open()
    names = await writer.run(broker._store.channel_names, f"listing channels of {broker._file}")
    epochs = [(channel, broker._epoch_factory()) for channel in names if which(channel)]
    if epochs:
        writer = broker._check_open()
        await writer.run(partial(broker._store.renew, epochs), f"renewing epochs in {broker._file}")
    for channel, _ in epochs:
        broker._channels.pop(channel, None)
    return len(epochs)


def _check_not_renewed(broker: SqliteBroker, channel: ChannelName, generation: int) -> None:
    """An adoption must not install or write what a restart begun since replaced
    (the file keeps whichever wrote last; memory reloads it from there)."""
    if generation != broker._renewals.generation:
        raise BrokerError(f"channel {channel} was restarted in a new epoch while adopted")
