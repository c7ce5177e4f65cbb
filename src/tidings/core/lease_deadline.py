"""Until when a node of the hash ring may sequence its keys: its lease's deadline as the node
can prove it (docs/modes/hashing.md, "Failures"). Pure: every time is given in.

Theory of operation
-------------------
A node owns keys only while its lease in etcd lives; once etcd has let the lease expire,
the other nodes take the node out of the ring and sequence its keys themselves. So the
node must have stopped sequencing before then, whether or not it can reach etcd to
learn it: no two nodes may ever sequence one key.

etcd starts a lease's new life when it *handles* a keep-alive (or the grant), which is
after the node *sent* it. Counting from the moment the request was sent therefore
never puts the expiry later than etcd does: the network's and etcd's delays only make
etcd's expiry later. The deadline is ``sent + ttl - margin``, and each keep-alive that
succeeds moves it (never back: answers of requests sent earlier may come later).

Why a margin, if the count starts early already: the two clocks are not the same
clock. etcd measures the lease on its leader's clock and this node on its own, and
clocks run at slightly different rates (quartz drifts by tens of parts per million,
NTP slews by up to 500 ppm); and between the check ``is_confirmed`` and the moment the
broker sequences, this process may be paused (a collection, a VM's stolen time). A
quarter of the lease (``MARGIN_FRACTION``) is far above the drift, and leaves room for
such a pause; it costs that a node cut off from etcd stops sequencing a quarter of
``ring_ttl`` sooner than it strictly must.

Past its deadline the node is *unconfirmed*: it refuses to sequence until a keep-alive
succeeds again, or it has joined anew with a new lease (``renewed`` both times).
``unreachable_since`` is when etcd first failed to answer since the last success:
what ``/ready`` tells an operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The part of the lease's time to live held back from the deadline (see above).
MARGIN_FRACTION: Final = 0.25


def margin_s(ttl_s: float) -> float:
    """The margin held back from a lease of ``ttl_s`` seconds (module docstring)."""
    return ttl_s * MARGIN_FRACTION


@dataclass(slots=True)
class LeaseDeadline:
    """One node's lease as it can prove it. Times are seconds on one monotonic clock."""

    deadline_s: float | None = None
    """Until when the lease is surely alive at etcd (``None``: no lease yet, or lost)."""
    unreachable_since_s: float | None = None
    """When etcd first failed to answer since the last success (``None``: it answers)."""

    def renewed(self, sent_s: float, ttl_s: float) -> None:
        """A grant or keep-alive sent at ``sent_s`` was answered with a time to live of
        ``ttl_s`` (more than 0): the lease lives until ``sent_s + ttl_s`` at least."""
        if ttl_s <= 0:
            raise ValueError(f"a renewed lease has a time to live, got {ttl_s}")
        deadline = sent_s + ttl_s - margin_s(ttl_s)
        if self.deadline_s is None or deadline > self.deadline_s:
            self.deadline_s = deadline
        self.unreachable_since_s = None

    def lost(self) -> None:
        """etcd answered that the lease no longer exists: unconfirmed until renewed (a
        new lease). etcd did answer: it is not unreachable."""
        self.deadline_s = None
        self.unreachable_since_s = None

    def failed(self, now_s: float) -> None:
        """etcd did not answer at ``now_s`` (the deadline stays: the lease may live)."""
        if self.unreachable_since_s is None:
            self.unreachable_since_s = now_s

    def is_confirmed(self, now_s: float) -> bool:
        """Whether the lease surely lives at ``now_s``: the node may sequence its keys."""
        return self.deadline_s is not None and now_s < self.deadline_s
