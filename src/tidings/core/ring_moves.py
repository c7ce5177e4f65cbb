"""Moving connections when the ring changes (docs/modes/hashing.md, "When the ring
changes"): which connections a new ring sends elsewhere, and when each is told. Pure:
the placement, the jitter and the times are handed in.

A new version of the ring gives some routing keys to other nodes. A connection that
holds a channel whose key went elsewhere is told to reconnect there (a ``disconnect``
4503 with the owner's ``url``, docs/protocol.md §9); one holding several such channels
goes to its user's owner if its user's channels moved (they all route by the user's
key, so they go together), else to the owner of the first of them by name: there,
channels owned by yet another node are answered ``moved`` one by one, as at any
subscribe. The connections are told one by one, ``rate`` per second: connection ``k``
at ``(k + j_k) / rate`` seconds, ``j_k`` in ``[0, 1)`` drawn by the caller, so the
new owners see the reconnects spread evenly, without a pattern shared by every node
that moves clients at once, and never more than ``rate + 1`` in any second.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.placement import Moved, Placement
from tidings.core.routing import routing_key, user_key


def connection_move(
    channels: Iterable[ChannelName], user: str, placement: Placement, namespaces: Namespaces
) -> Moved | None:
    """Return where a connection of ``user`` (``""``: anonymous) holding ``channels``
    must go under ``placement``, or ``None`` if this node still serves all of them.

    The owner of the user's own channels if one of them moved, else the owner of the
    first moved channel by name.
    """
    first: Moved | None = None
    own_key = user_key(user) if user else None
    for channel in sorted(channels):
        place = placement.place(channel)
        if not isinstance(place, Moved):
            continue
        if own_key is not None and routing_key(channel, namespaces) == own_key:
            return place
        if first is None:
            first = place
    return first


def move_times_ms(rate: float, jitters: Sequence[float]) -> list[int]:
    """Return when each of ``len(jitters)`` connections is told to move, in
    milliseconds after the ring changed: connection ``k`` at ``(k + jitters[k]) / rate``
    seconds.

    Raises:
        ValueError: ``rate`` is not a positive number, or a jitter is outside ``[0, 1)``.
    """
    if not 0 < rate < math.inf:
        raise ValueError(f"rate must be a positive number, got {rate}")
    if any(not 0 <= jitter < 1 for jitter in jitters):
        raise ValueError("each jitter must be in [0, 1)")
    return [math.floor((k + jitter) * 1000 / rate) for k, jitter in enumerate(jitters)]
