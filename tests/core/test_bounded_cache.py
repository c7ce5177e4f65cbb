"""The byte-bounded LRU map (core/bounded_cache.py): never over its budget, never keeps
an entry over its size, evicts the least recently used first."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.bounded_cache import ENTRY_OVERHEAD_BYTES, BoundedCache

BUDGET = 10 * (100 + ENTRY_OVERHEAD_BYTES)
MAX_ENTRY = 3 * (100 + ENTRY_OVERHEAD_BYTES)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["put", "get", "discard"]), st.integers(0, 30), st.integers(0, 1200)
        )
    )
)
def test_cache_never_exceeds_its_budget_and_counts_exactly_what_it_keeps(
    steps: list[tuple[str, int, int]],
) -> None:
    cache: BoundedCache[int, str] = BoundedCache(BUDGET, MAX_ENTRY)
    kept: dict[int, int] = {}  # key -> cost, as a model
    for action, key, cost in steps:
        if action == "put":
            cache.put(key, f"v{key}", cost)
        elif action == "get":
            value = cache.get(key)
            assert value is None or value == f"v{key}"
        else:
            cache.discard(key)
        assert cache.size_bytes <= BUDGET
        kept = {k: c for k, c in kept.items() if k in cache}
        if action == "put" and key in cache:
            kept[key] = cost + ENTRY_OVERHEAD_BYTES
        assert cache.size_bytes == sum(kept.values())


def test_least_recently_used_goes_first() -> None:
    cache: BoundedCache[str, int] = BoundedCache(3 * (100 + ENTRY_OVERHEAD_BYTES), MAX_ENTRY)
    for key in "abc":
        cache.put(key, 1, 100)
    assert cache.get("a") == 1
    cache.put("d", 1, 100)
    assert "b" not in cache
    assert all(key in cache for key in "acd")


def test_an_entry_over_the_largest_size_is_not_kept_and_evicts_nothing() -> None:
    cache: BoundedCache[str, int] = BoundedCache(BUDGET, MAX_ENTRY)
    cache.put("small", 1, 100)
    cache.put("large", 2, MAX_ENTRY)
    assert "large" not in cache
    assert cache.get("small") == 1
    cache.put("small", 3, MAX_ENTRY)  # replaced by one too large: forgotten
    assert len(cache) == 0
    assert cache.size_bytes == 0


def test_a_budget_smaller_than_the_largest_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="budget_bytes"):
        BoundedCache(100, 200)
