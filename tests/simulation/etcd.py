"""Simulated etcd: the ring record changed only by compare-and-swap on its version, the
members' leases, and the givers' ``handed/<version>/<node>`` keys.

Every change is announced to every member by the world's watch (in order, after a
delay per node). Writes are atomic and reads linearizable, as etcd's are.
"""

from __future__ import annotations

from tidings.core.handover import RingRecord


class SimEtcd:
    """The keys of one ring's prefix."""

    __slots__ = ("handed", "members", "record", "writes")

    def __init__(self) -> None:
        self.record = RingRecord()
        self.members: dict[str, int] = {}  # member key -> the lease it is attached to
        self.handed: dict[int, set[str]] = {}
        self.writes = 0

    def compare_and_swap(self, expected_version: int, record: RingRecord) -> bool:
        """Write ``record`` if the stored one still has ``expected_version``."""
        if self.record.version != expected_version or record is self.record:
            return False
        self.record = record
        self.writes += 1
        if not record.in_transition:
            self.handed.clear()  # the final ring deletes <prefix>/handed/
        return True

    def mark_handed(self, version: int, node: str) -> None:
        """Write ``handed/<version>/<node>``."""
        self.handed.setdefault(version, set()).add(node)
