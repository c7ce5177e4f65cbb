"""Self-fencing of a node of the ring in etcd (docs/modes/hashing.md, "Failures"): no
publication is sequenced here while this node cannot prove its lease lives.

No I/O: it reads the lease's deadline ``RingMember`` keeps (``core.lease_deadline``).
A node cut off from etcd keeps the last ring it saw and goes on serving it:
subscriptions, history, ``/route`` and admission do not change. Only sequencing
stops, and only for the channels this node owns, once its lease's deadline has
passed: from then on etcd may have let the lease expire and another node may be
sequencing them. The hub asks ``RingFence`` before every publish (WebSocket
``publish``, ``POST /api/publish`` and ``/api/broadcast``, calls forwarded by other
nodes, sources), which refuses with ``unavailable``: nothing was published, and the
publisher retries (here once the lease is confirmed again, or on the new owner).

``readiness`` says the same to ``/ready``: a node that cannot confirm its lease is not
ready, and says since when etcd has not answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Protocol

from tidings.core.channel import ChannelName
from tidings.core.placement import Here, Placement
from tidings.errors import Unavailable


class LeaseHolder(Protocol):
    """What the fence reads of a node's membership (``server.routing.RingMember``)."""

    def is_confirmed(self) -> bool:
        """Whether the node's lease surely lives now."""
        ...

    def unreachable_since(self) -> float | None:
        """Since when (Unix seconds) etcd has not answered, or ``None``."""
        ...


class RingFence:
    """Refuses publications of this node's channels while its lease is unconfirmed; a
    hub's ``fence``."""

    def __init__(self, placement: Placement, member: LeaseHolder) -> None:
        self._placement = placement
        self._member = member

    def __call__(self, channel: ChannelName) -> None:
        """Return if ``channel`` may be sequenced here now.

        Raises:
            Unavailable: this node owns ``channel`` (in the last ring it saw) and cannot
                confirm its lease.
        """
        if self._member.is_confirmed() or not isinstance(self._placement.place(channel), Here):
            return
        raise Unavailable(
            f"this node cannot confirm that it owns channel {channel} (its lease in etcd "
            "is unconfirmed); not published; retry shortly"
        )


def readiness(member: LeaseHolder, wall_clock: Callable[[], float] = time.time) -> str | None:
    """Why this node is not ready as a member of the ring, or ``None`` if it is."""
    if member.is_confirmed():
        return None
    since = member.unreachable_since()
    if since is None:
        return "this node has no confirmed lease in etcd (it is joining the ring)"
    stamp = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f"etcd is unreachable since {stamp} ({wall_clock() - since:.0f} s): this node cannot "
        "confirm its lease and publishes in none of the channels it owns"
    )
