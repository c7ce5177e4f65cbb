"""The heaviest keys of a weighted stream in bounded space (Misra-Gries, batched). Pure.

A ``HeavyHitters(k)`` counts at most ``4k`` keys. A key's weight is added to its count,
a new key enters with its weight. When a new key would make ``4k + 1``, the summary is
*purged*: the ``(k+1)``-th largest count ``c`` is subtracted from every count, the keys
left at zero or below are dropped (at most ``k`` remain), and ``c`` is added to the
``offset``. This is the Misra-Gries "Frequent" algorithm with its decrements batched,
as Apache DataSketches' frequent-items sketch does: a purge costs one sort of ``4k``
counts and one pass, in C mostly, once per ``3k`` new keys at least, so a record is
one dict update plus a small amortised share of a purge: cheap enough for fan-out.

Invariants, with ``N`` the total weight recorded (the property tests in
tests/core/test_heavy_hitters.py state them):

* at most ``4k`` keys are counted, whatever the stream;
* a counted key's true weight ``w`` satisfies ``count <= w <= count + offset``: purges
  only subtract, and what a key lost (while counted, or before, when dropped: then it
  had at most the offset of that time) is at most the offset;
* ``offset <= N / (k + 1)``: a purge subtracting ``c`` takes ``c`` from each of at least
  ``k + 1`` counts, and no more than ``N`` can ever be taken in all;
* so every key heavier than ``N / (k + 1)`` is counted (one that is not weighs at most
  the offset), and counts plus all that purges took sum to ``N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass(frozen=True, slots=True)
class Estimate(Generic[K]):
    """A counted key's weight: at most ``count``, at least ``count - error``."""

    key: K
    count: int
    error: int

    @property
    def guaranteed(self) -> int:
        """The weight the key surely has: ``count - error``."""
        return self.count - self.error


class HeavyHitters(Generic[K]):
    """Counts the heaviest keys of a stream in at most ``4k`` entries (see the module
    docstring); ``k`` is ``keep``."""

    __slots__ = ("_counts", "_limit", "keep", "offset", "total")

    def __init__(self, keep: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.keep = keep
        # Purging down to ``keep`` from four times as many pays one sort per 3k new keys.
        self._limit = 4 * keep
        self.total = 0
        self.offset = 0  # the most any key's count is under its true weight
        self._counts: dict[K, int] = {}

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
        counts[key] = weight
        if len(counts) > self._limit:
            self._purge()

    def _purge(self) -> None:
        counts = self._counts
        cut = sorted(counts.values(), reverse=True)[self.keep]  # the (k+1)-th largest
        self._counts = {key: count - cut for key, count in counts.items() if count > cut}
        self.offset += cut

    @property
    def purged(self) -> int:
        """The weight purges took, all keys together (what the counts no longer hold)."""
        return self.total - sum(self._counts.values())

    def keys(self) -> Iterator[K]:
        """Iterate over the counted keys."""
        return iter(self._counts)

    def estimate(self, key: K) -> Estimate[K] | None:
        """Return ``key``'s estimate, or ``None`` if it is not counted (then its true
        weight is at most ``offset``: zero while nothing was ever purged)."""
        count = self._counts.get(key)
        if count is None:
            return None
        return Estimate(key, count + self.offset, self.offset)

    def top(self, n: int) -> list[Estimate[K]]:
        """Return the ``n`` counted keys of highest count, highest first."""
        best = sorted(self._counts.items(), key=lambda item: item[1], reverse=True)[:n]
        return [Estimate(key, count + self.offset, self.offset) for key, count in best]
