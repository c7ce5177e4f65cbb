"""The heaviest keys of a weighted stream in bounded space: the Space-Saving summary. Pure.

Space-Saving (Metwally, Agrawal and El Abbadi, 2005) monitors at most ``capacity`` keys.
A monitored key's weight is added to its count. A key not monitored, arriving when the
summary is full, replaces the key of least count ``m``: it takes the count ``m + weight``
and records ``m`` as its error (what it may have inherited rather than earned).

Invariants, with ``N`` the total weight recorded and ``k`` the capacity (the property
tests in tests/core/test_heavy_hitters.py state them):

* at most ``k`` keys are monitored, whatever the stream;
* the counts sum to ``N`` exactly (an eviction hands its count on);
* a monitored key's true weight ``w`` satisfies ``count - error <= w <= count``;
* the least count is at most ``N / k``, so every error is too, and every key of true
  weight above ``N / k`` is monitored (one outside has ``w <= least count``).

The least count is found with a min-heap holding exactly one entry per monitored key,
which may be stale (lower than the key's count: increments do not touch the heap). A
stale minimum is pushed back with its current count and the next one tried; each push
back pays for increments made since, so an update costs amortised O(log k) and an
increment of a monitored key, the common case of a skewed stream, one dict update.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

# Keys are strings (channel names): a heap entry tie on count compares keys.
K = TypeVar("K", bound=str)


@dataclass(frozen=True, slots=True)
class Estimate(Generic[K]):
    """A monitored key's count, an upper bound of its true weight, and its error:
    the true weight is at least ``count - error``."""

    key: K
    count: int
    error: int

    @property
    def guaranteed(self) -> int:
        """The weight the key surely has: ``count - error``."""
        return self.count - self.error


class SpaceSaving(Generic[K]):
    """A Space-Saving summary of at most ``capacity`` keys (see the module docstring)."""

    __slots__ = ("_counts", "_errors", "_heap", "capacity", "total")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.total = 0
        self._counts: dict[K, int] = {}
        self._errors: dict[K, int] = {}
        # (count when pushed, key); one entry per monitored key, possibly stale.
        self._heap: list[tuple[int, K]] = []

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, key: K, weight: int = 1) -> None:
        """Record ``weight`` (> 0; a zero weight is ignored) for ``key``."""
        if weight <= 0:
            return
        self.total += weight
        counts = self._counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + weight
            return
        if len(counts) < self.capacity:
            counts[key] = weight
            self._errors[key] = 0
            heapq.heappush(self._heap, (weight, key))
            return
        least, evicted = self._pop_least()
        del counts[evicted]
        del self._errors[evicted]
        counts[key] = least + weight
        self._errors[key] = least
        heapq.heappush(self._heap, (least + weight, key))

    def _pop_least(self) -> tuple[int, K]:
        """Remove the heap entry of the key of least count; return that count and key."""
        heap, counts = self._heap, self._counts
        while True:
            pushed, key = heap[0]
            count = counts[key]
            if count == pushed:
                heapq.heappop(heap)
                return count, key
            heapq.heapreplace(heap, (count, key))  # stale: put it back where it belongs

    def keys(self) -> Iterator[K]:
        """Iterate over the monitored keys."""
        return iter(self._counts)

    def estimate(self, key: K) -> Estimate[K] | None:
        """Return ``key``'s estimate, or ``None`` if it is not monitored (then its true
        weight is at most the least count)."""
        count = self._counts.get(key)
        if count is None:
            return None
        return Estimate(key, count, self._errors[key])

    def top(self, n: int) -> list[Estimate[K]]:
        """Return the ``n`` monitored keys of highest count, highest first."""
        best = heapq.nlargest(n, self._counts.items(), key=lambda item: item[1])
        return [Estimate(key, count, self._errors[key]) for key, count in best]
