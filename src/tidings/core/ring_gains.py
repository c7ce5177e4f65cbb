"""What a node does with a channel a new version of the ring makes it the sequencer of,
when another node sequenced it under the previous one: pure (docs/modes/hashing.md,
"Failures" and "Scaling without loss").

A node that gains a key has not sequenced it while another node did: whatever it still
holds of the key's channels from an earlier time it sequenced them (their history,
their head offset, in its own epoch), or from a hand-over its giver never finished (the
giver crashed), may lack publications the other node acknowledged. A client that
resumed from a position of that time would be told ``recovered: true`` across them: a
silent gap. So the node restarts those channels in a new epoch before it sequences or
serves them, and clients resuming there hear ``recovered: false``. Only a channel handed
over complete (the giver's sealed top held) continues the giver's epoch. This one rule,
``decide_takeover``, serves both kinds of node: one taking part in hand-overs
(``server.handover``) and one that does not (no ``cluster_secret``, or a store that
cannot adopt channels), which never holds a channel complete and restarts what it gains
(``brokers.base.RenewingStore.restart_channels``, through ``gained_channels``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from tidings.core.channel import ChannelName
from tidings.core.handover import Transition


class TakeoverStep(enum.Enum):
    """What a node does with a channel it holds when a new ring arrives."""

    KEEP = "keep"
    """The ring gives it nothing new: it sequenced the channel before too, or does not
    now (or it had no ring before: it had not joined)."""
    CONTINUE = "continue"
    """It gains the channel, handed over complete: continue the giver's epoch."""
    RENEW = "renew"
    """It gains the channel without a complete hand-over: restart it in a new epoch."""


def decide_takeover(
    before: Transition | None,
    after: Transition | None,
    node_id: str,
    key: str,
    *,
    handed_whole: bool,
    empty_ring_gains: bool,
) -> TakeoverStep:
    """Judge a channel with routing key ``key`` that node ``node_id`` holds, as the ring
    goes from ``before`` to ``after`` (``None``: no ring).

    A node sequences a key under a ring when it is the key's old owner (in a transition
    the old owner sequences until the ring is final, so nothing is gained at its start,
    only when it ends or a crash removes the old owner). The node gains the key when
    it sequences it under ``after`` and another node did under ``before``.

    Args:
        before: the ring the node routed by until now; ``None`` before it joined, when
            nothing it holds came from another node.
        after: the new ring; ``None`` when every node left it, and the node serves
            every channel itself.
        node_id: the node deciding.
        key: the channel's routing key.
        handed_whole: whether the node holds the channel handed over complete by its
            sequencer under ``before`` (the giver's sealed top); never true for a node
            that takes no part in hand-overs.
        empty_ring_gains: whether, with no ring ``after``, the node gains the keys
            another node sequenced under ``before``. The hand-over's path says yes (the
            node sequences every key then), the path without hand-over says no; kept
            apart because it is how each path has always behaved.
    """
    if before is None:
        return TakeoverStep.KEEP
    sequences_now = after.old_owner(key) == node_id if after is not None else empty_ring_gains
    if not sequences_now or before.old_owner(key) == node_id:
        return TakeoverStep.KEEP
    return TakeoverStep.CONTINUE if handed_whole else TakeoverStep.RENEW


def gained_channels(
    before: Transition | None,
    after: Transition | None,
    node_id: str,
    key_of: Callable[[ChannelName], str],
) -> Callable[[ChannelName], bool]:
    """The channels node ``node_id``, taking no part in hand-overs, restarts in a new
    epoch as the ring goes from ``before`` to ``after`` (``decide_takeover``; ``key_of``
    gives a channel's routing key): those it sequences under ``after`` and another node
    did under ``before``. No ring before (the node had not joined) or after (every node
    left): none."""

    def gained(channel: ChannelName) -> bool:
        step = decide_takeover(
            before, after, node_id, key_of(channel), handed_whole=False, empty_ring_gains=False
        )
        return step is TakeoverStep.RENEW

    return gained
