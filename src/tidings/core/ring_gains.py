"""The channels a new version of the ring gives to this node that the previous one did
not: pure (docs/modes/hashing.md, "Failures").

A node that gains a key has not sequenced it while another node owned it: whatever it
still holds of the key's channels from an earlier time it owned them (their history,
their head offset, in its own epoch) is stale, and a client that resumed from a
position of that earlier time would be told ``recovered: true`` across the
publications the other owner made: a silent gap. So the node restarts those channels
in a new epoch before it serves them (``brokers.memory.MemoryBroker.restart_channels``).
Until the hand-over of DESIGN.md copies a moving key's history to its new owner, every
gain is such a gain; once it does, the keys handed over are to be left out here.
"""

from __future__ import annotations

from collections.abc import Callable

from tidings.core.channel import ChannelName
from tidings.core.placement import Here
from tidings.core.routing import RingPlacement


def gained_channels(
    before: RingPlacement | None, after: RingPlacement | None
) -> Callable[[ChannelName], bool]:
    """Whether a channel is this node's in ``after`` and was another's in ``before``.
    No ring before (the node had not joined) or after (every node left, each serves
    all): nothing is gained from another node."""
    if before is None or after is None:
        return lambda _channel: False

    def gained(channel: ChannelName) -> bool:
        return isinstance(after.place(channel), Here) and not isinstance(
            before.place(channel), Here
        )

    return gained
