"""The heaviest keys of a stream of weighted hits, in bounded space (Misra-Gries). Pure.

A ``HeavyHitters(k, limit)`` counts, per key, two figures: its *hits* (one per record)
and its *weight* (the sum of the records' weights): for hot channels, publications and
their deliveries. One int per key holds both, ``hits << HITS_SHIFT | weight``, so
recording is one dict lookup and ``count + HIT + weight`` (``add``, or the caller's own
copy of it on a hot path); and no container per key, nothing more for the cyclic
garbage collector to track (a list per key made each gen-0 collection come sooner). A
key's weight stays below ``2 ** HITS_SHIFT`` (a trillion deliveries per window), so
never carries into its hits.

At most ``limit`` keys are counted. When a new key would make ``limit + 1``, the summary
is *purged*, each figure on its own: with ``c`` the ``(k+1)``-th largest count of that
figure, ``c`` is subtracted from every key's count of it (a count below ``c`` becomes
0) and added to that figure's offset; the keys left with both counts at 0 are dropped.
At most ``2k`` keys remain (no more than ``k`` counts of a figure exceed its ``c``).
This is the Misra-Gries "Frequent" algorithm with its decrements batched, as Apache
DataSketches' frequent-items sketch does, run for two figures over one key space: a
purge costs two sorts of ``limit`` counts and one pass, once per ``limit - 2k`` new
keys at least.

Invariants, per figure, with ``N`` its total recorded (the property tests in
tests/core/test_heavy_hitters.py state them):

* at most ``limit`` keys are counted, whatever the stream;
* a counted key's true figure ``w`` satisfies ``count <= w <= count + offset``, and a
  key not counted has ``w <= offset``: a purge takes at most ``c`` from any key, and
  the offset is the sum of the ``c``;
* ``offset <= N / (k + 1)``: a purge subtracting ``c`` takes all of it from at least
  ``k + 1`` counts, and no more than ``N`` can ever be taken in all;
* so every key whose figure exceeds ``N / (k + 1)`` is counted, and the counts plus
  what purges took sum to ``N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress, repeat
from operator import and_, le, lt, or_
from typing import Final, Generic, TypeVar

K = TypeVar("K")

HITS_SHIFT: Final = 40  # a count is ``hits << HITS_SHIFT | weight``
HIT: Final = 1 << HITS_SHIFT  # one hit, in a count
WEIGHT_MASK: Final = HIT - 1


@dataclass(frozen=True, slots=True)
class Estimate(Generic[K]):
    """A counted key's figures: each at most its count, at least its count less its
    error."""

    key: K
    hits: int
    hits_error: int
    weight: int
    weight_error: int


class HeavyHitters(Generic[K]):
    """Counts the hits and weight of the heaviest keys of a stream in at most ``limit``
    entries (see the module docstring); ``k`` is ``keep``.

    ``counts`` maps each counted key to its count (see the module docstring). A hot
    path may do what ``add`` does itself: add ``HIT + weight`` to a counted key's
    count, or set a new key's to it and then call ``purge()`` if
    ``len(counts) > limit``. ``counts`` is replaced by each purge: read it afresh for
    every hit.
    """

    __slots__ = ("counts", "hits_offset", "keep", "limit", "weight_offset")

    def __init__(self, keep: int, limit: int) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if limit <= 2 * keep:
            raise ValueError(f"limit must exceed 2 × keep ({2 * keep}), got {limit}")
        self.keep = keep
        self.limit = limit
        self.counts: dict[K, int] = {}
        self.hits_offset = 0  # the most any key's hits count is under its true hits
        self.weight_offset = 0

    def __len__(self) -> int:
        return len(self.counts)

    def add(self, key: K, weight: int) -> None:
        """Count one hit of ``key`` of ``weight`` (>= 0)."""
        counts = self.counts
        count = counts.get(key)
        if count is not None:
            counts[key] = count + HIT + weight
        else:
            counts[key] = HIT + weight
            if len(counts) > self.limit:
                self.purge()

    def purge(self) -> None:
        """Purge (see the module docstring); due when more than ``limit`` keys are
        counted."""
        counts = self.counts
        keep = self.keep
        values = list(counts.values())
        weights = list(map(and_, values, repeat(WEIGHT_MASK)))  # each weight, once
        # The (k+1)-th largest of each figure, by sorts in C (a few tens of ns per key).
        # Counts sort by hits first, so the hits' is that of the (k+1)-th count.
        hits_cut = sorted(values, reverse=True)[keep] >> HITS_SHIFT
        weight_cut = sorted(weights, reverse=True)[keep]
        hits_above = (hits_cut + 1) << HITS_SHIFT  # the least count over the cut
        # The keys over either cut (at most 2k) are picked in C, no bytecode run per key:
        # a purge costs about half what a comprehension testing every key did, and on a
        # node with more channels than ``limit`` purges are most of the counting's cost.
        over = map(
            or_,
            map(le, repeat(hits_above), values),  # operator's, called without a tuple
            map(lt, repeat(weight_cut), weights),
        )
        self.counts = {
            key: max((count >> HITS_SHIFT) - hits_cut, 0) << HITS_SHIFT
            | max(weight - weight_cut, 0)
            for key, count, weight in compress(zip(counts, values, weights, strict=True), over)
        }
        self.hits_offset += hits_cut
        self.weight_offset += weight_cut

    def keys(self) -> Iterator[K]:
        """Iterate over the counted keys."""
        return iter(self.counts)

    def estimate(self, key: K) -> Estimate[K] | None:
        """Return ``key``'s estimate, or ``None`` if it is not counted (then each of its
        true figures is at most that figure's offset: zero while nothing was purged)."""
        count = self.counts.get(key)
        if count is None:
            return None
        return self._estimate_of(key, count)

    def top(self, n: int) -> list[Estimate[K]]:
        """Return the ``n`` counted keys of highest weight count, then hits, highest
        first."""
        best = sorted(
            self.counts.items(),
            key=lambda item: (item[1] & WEIGHT_MASK, item[1]),
            reverse=True,
        )[:n]
        return [self._estimate_of(key, count) for key, count in best]

    def _estimate_of(self, key: K, count: int) -> Estimate[K]:
        hits_offset, weight_offset = self.hits_offset, self.weight_offset
        return Estimate(
            key,
            (count >> HITS_SHIFT) + hits_offset,
            hits_offset,
            (count & WEIGHT_MASK) + weight_offset,
            weight_offset,
        )
