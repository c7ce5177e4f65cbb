"""The recovery decision: given a client's position and a channel's history, replay or gap.

Pure. This is the one place that decides whether a resuming client can be given exactly
the publications it missed (docs/protocol.md §2.3). Every transport and every broker asks it,
so the rule is written once:

* a position of another epoch: the history it refers to is gone          -> ``Gap``
* a position ahead of the channel's head: the client knows more than we   -> ``Gap``
* a position at the head: nothing was missed                              -> ``Replay(())``
* a position whose successor is still retained: replay from there on      -> ``Replay``
* a position whose successor was evicted (size or ttl): some are lost     -> ``Gap``

Retained publications are consecutive by offset (brokers only ever evict from the
front), which makes the successor's index a subtraction.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice

from tidings.core.publication import Position, Publication


class GapReason(enum.Enum):
    """Why a position cannot be recovered."""

    EPOCH_CHANGED = "the channel's history was lost since that position (new epoch)"
    AHEAD_OF_HEAD = "that position is ahead of the channel's last publication"
    EVICTED = "publications after that position are no longer in the history"


@dataclass(frozen=True, slots=True)
class Replay:
    """The publications after the position, in offset order (possibly cut by a limit)."""

    publications: tuple[Publication, ...]


@dataclass(frozen=True, slots=True)
class Gap:
    """The position cannot be recovered; the client must refetch its state."""

    reason: GapReason


Recovery = Replay | Gap


def decide_recovery(
    since: Position,
    epoch: str,
    head_offset: int,
    retained: Sequence[Publication],
    limit: int | None = None,
) -> Recovery:
    """Decide what a client resuming from ``since`` gets.

    Args:
        since: the client's position.
        epoch: the channel's current epoch.
        head_offset: the offset of the channel's last publication (0 if none).
        retained: the channel's retained publications, consecutive, oldest first.
        limit: at most this many publications in a ``Replay``; ``None`` for all.

    Returns:
        ``Replay`` with the publications after ``since`` (the first ``limit`` of them),
        or ``Gap`` with the reason they cannot all be given.
    """
    if since.epoch != epoch:
        return Gap(GapReason.EPOCH_CHANGED)
    if since.offset > head_offset:
        return Gap(GapReason.AHEAD_OF_HEAD)
    if since.offset == head_offset:
        return Replay(())
    if not retained or retained[0].offset > since.offset + 1:
        return Gap(GapReason.EVICTED)
    start = since.offset + 1 - retained[0].offset
    stop = len(retained) if limit is None else min(len(retained), start + limit)
    # islice, not a slice: the history is a deque, which cannot be sliced.
    return Replay(tuple(islice(retained, start, stop)))


def latest(retained: Sequence[Publication], limit: int | None) -> tuple[Publication, ...]:
    """Return the last ``limit`` retained publications (all with ``None``), oldest first."""
    if limit is None or limit >= len(retained):
        return tuple(retained)
    if limit <= 0:
        return ()
    return tuple(islice(retained, len(retained) - limit, None))
