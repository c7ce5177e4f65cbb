"""The live catch-up rule: what to do with a publication, given the position held. Pure.

Whoever follows a channel live (a broker's listener, the hub for each subscription, a
poll watch, a client) holds a position: the last publication it has. Each publication
that arrives is judged against it, always by the same rule:

* ``DELIVER``: it is the next one (the held offset + 1 of the held epoch), or nothing
  is held yet, so there is nothing to compare with.
* ``ALREADY_HAD``: at or below the held offset of the held epoch (a redelivery, a
  replay overlapping the live stream), or of an epoch the holder has *left*: offsets of
  an epoch name one publication each for good (docs/protocol.md §1), and a left epoch's
  history is gone, so delivering it could only go back in time. Drop it.
* ``HOLE``: ahead of the next one, in the held epoch: publications in between are
  missing, and the channel's history may still hold them. Read history first (a
  broker), or tell the reader it was not continuous (the hub, a client).
* ``GAP``: another epoch (not one left): the channel was lost or rolled back and the
  held epoch's history is gone. What follows is the new epoch's; the holder reports a
  gap, or (a broker) restarts from that epoch's beginning.

Callers choose what each outcome does; this module only decides which it is.
"""

from __future__ import annotations

import enum
from collections.abc import Container

from tidings.core.publication import Position


class CatchUp(enum.Enum):
    """What a live publication is to whoever holds a position; see the module docstring."""

    DELIVER = "deliver"
    ALREADY_HAD = "already_had"
    HOLE = "hole"
    GAP = "gap"


def decide_catch_up(
    held: Position | None, position: Position, left: Container[str] = ()
) -> CatchUp:
    """Judge a publication at ``position`` against the ``held`` one.

    Args:
        held: the position of the last publication had, ``None`` if there is none yet.
        position: the publication's position.
        left: epochs the holder has moved away from; their publications are stale.
    """
    if held is None:
        return CatchUp.DELIVER
    if position.epoch == held.epoch:
        offset = position.offset
        if offset <= held.offset:
            return CatchUp.ALREADY_HAD
        return CatchUp.DELIVER if offset == held.offset + 1 else CatchUp.HOLE
    return CatchUp.ALREADY_HAD if position.epoch in left else CatchUp.GAP
