"""The heavy-hitters summary (core/heavy_hitters.py): bounded whatever the stream, every
heavy key reported, and counts that bound true weights from above within the error."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.heavy_hitters import HeavyHitters

capacities = st.integers(min_value=1, max_value=12)
# Few distinct keys make heavy ones; weights make the weighted (deliveries) case.
streams = st.lists(
    st.tuples(
        st.sampled_from([f"k{i}" for i in range(40)]), st.integers(min_value=1, max_value=50)
    ),
    max_size=400,
)


def _summarise(
    capacity: int, stream: list[tuple[str, int]]
) -> tuple[HeavyHitters[str], Counter[str]]:
    summary: HeavyHitters[str] = HeavyHitters(capacity)
    truth: Counter[str] = Counter()
    for key, weight in stream:
        summary.add(key, weight)
        truth[key] += weight
    return summary, truth


@given(capacities, streams)
def test_summary_never_counts_more_than_four_times_what_it_keeps(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary: HeavyHitters[str] = HeavyHitters(capacity)
    for key, weight in stream:
        summary.add(key, weight)
        assert len(summary) <= 4 * capacity


@given(capacities, streams)
def test_counts_and_what_purges_took_sum_to_the_total_weight(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(capacity, stream)
    assert summary.total == sum(truth.values())
    counted = sum(estimate.guaranteed for estimate in summary.top(4 * capacity))
    assert counted + summary.purged == summary.total


@given(capacities, streams)
def test_every_key_heavier_than_total_over_capacity_is_reported(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(capacity, stream)
    reported = {estimate.key for estimate in summary.top(4 * capacity)}
    for key, weight in truth.items():
        if weight > summary.total / (capacity + 1):
            assert key in reported


@given(capacities, streams)
def test_count_overestimates_true_weight_by_at_most_the_recorded_error(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(capacity, stream)
    assert summary.offset <= summary.total / (capacity + 1)
    for estimate in summary.top(4 * capacity):
        assert estimate.guaranteed <= truth[estimate.key] <= estimate.count
        assert estimate.error == summary.offset
    for key, weight in truth.items():  # one not counted weighs at most the offset
        if summary.estimate(key) is None:
            assert weight <= summary.offset


def test_zero_weight_is_not_recorded() -> None:
    summary: HeavyHitters[str] = HeavyHitters(2)
    summary.add("quiet", 0)
    assert len(summary) == 0
    assert summary.total == 0


def test_top_lists_the_heaviest_first() -> None:
    summary: HeavyHitters[str] = HeavyHitters(4)
    for key, weight in (("a", 3), ("b", 10), ("c", 1), ("b", 1)):
        summary.add(key, weight)
    assert [(e.key, e.count, e.error) for e in summary.top(2)] == [("b", 11, 0), ("a", 3, 0)]


def test_keep_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        HeavyHitters(0)
