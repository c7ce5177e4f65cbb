"""A least-recently-used map bounded by the bytes its entries cost. Pure.

The memos of the poll path (parsed queries, encoded answers, decoded cursors) are kept
because the same poll comes back again and again. Bounded by entry count they were not
bounded at all: one entry may be a 64 MiB answer, or a parse keyed on a query string
full of junk parameters. A ``BoundedCache`` is given a byte budget and a cost per
entry (the caller's estimate of what the entry holds: its key's strings, its encoded
body); it evicts the least recently used entries past the budget, and does not keep an
entry costing more than ``max_entry_bytes`` at all: a large answer is cheap to make
again compared to what keeping a few of them costs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# What one entry costs beyond what the caller counts: the map's slot, the key tuple,
# the value's own object headers. An estimate, so that many tiny entries still add up.
ENTRY_OVERHEAD_BYTES: Final = 200


class BoundedCache(Generic[K, V]):
    """Entries kept while their costs add up to at most ``budget_bytes``."""

    __slots__ = ("_costs", "_entries", "budget_bytes", "max_entry_bytes", "size_bytes")

    def __init__(self, budget_bytes: int, max_entry_bytes: int) -> None:
        """Keep at most ``budget_bytes`` of entries, none costing over ``max_entry_bytes``.

        Raises:
            ValueError: a budget that is negative, or smaller than the largest entry.
        """
        if max_entry_bytes < 0 or budget_bytes < max_entry_bytes:
            raise ValueError(
                f"need budget_bytes >= max_entry_bytes >= 0, got {budget_bytes} and "
                f"{max_entry_bytes}"
            )
        self.budget_bytes = budget_bytes
        self.max_entry_bytes = max_entry_bytes
        self.size_bytes = 0
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._costs: dict[K, int] = {}

    def get(self, key: K) -> V | None:
        """Return the value kept for ``key`` (now the most recently used), or ``None``."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, cost_bytes: int) -> None:
        """Keep ``value`` for ``key`` if it costs at most ``max_entry_bytes`` (plus the
        per-entry overhead), evicting the least recently used entries past the budget."""
        cost = cost_bytes + ENTRY_OVERHEAD_BYTES
        self.discard(key)
        if cost > self.max_entry_bytes:
            return
        self._entries[key] = value
        self._costs[key] = cost
        self.size_bytes += cost
        while self.size_bytes > self.budget_bytes:
            oldest, _ = self._entries.popitem(last=False)
            self.size_bytes -= self._costs.pop(oldest)

    def discard(self, key: K) -> None:
        """Forget ``key``, if kept."""
        if self._entries.pop(key, None) is not None:
            self.size_bytes -= self._costs.pop(key)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()
        self._costs.clear()
        self.size_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
