"""The channels a new version of the ring gives to this node that the previous one did
not: pure (docs/modes/hashing.md, "Failures").

A node that gains a key has not sequenced it while another node owned it: whatever it
still holds of the key's channels from an earlier time it owned them (their history,
their head offset, in its own epoch) is stale, and a client that resumed from a
position of that earlier time would be told ``recovered: true`` across the
publications the other owner made: a silent gap. So the node restarts those channels
in a new epoch before it serves them (``brokers.memory.MemoryBroker.restart_channels``).
This is for a node that takes no part in hand-overs (no ``cluster_secret``, or a store
that cannot adopt channels): one that does renews what it gains without a complete
hand-over itself (``server.handover``), and must keep what it was handed.
"""

from __future__ import annotations

from collections.abc import Callable

from tidings.core.channel import ChannelName
from tidings.core.handover import Transition


def gained_channels(
    before: Transition | None,
    after: Transition | None,
    node_id: str,
    key_of: Callable[[ChannelName], str],
) -> Callable[[ChannelName], bool]:
    """Whether node ``node_id`` sequences a channel under ``after`` and another node did
    under ``before`` (``key_of`` gives a channel's routing key). No ring before (the
    node had not joined) or after (every node left, each serves all): nothing is gained
    from another node."""
    if before is None or after is None:
        return lambda _channel: False

    def gained(channel: ChannelName) -> bool:
        key = key_of(channel)
        return after.old_owner(key) == node_id and before.old_owner(key) != node_id

    return gained
