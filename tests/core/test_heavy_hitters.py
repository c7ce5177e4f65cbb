"""The Space-Saving summary (core/heavy_hitters.py): bounded whatever the stream, every
heavy key reported, and counts that bound true weights from above within the error."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.heavy_hitters import SpaceSaving

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
) -> tuple[SpaceSaving[str], Counter[str]]:
    summary: SpaceSaving[str] = SpaceSaving(capacity)
    truth: Counter[str] = Counter()
    for key, weight in stream:
        summary.add(key, weight)
        truth[key] += weight
    return summary, truth


@given(capacities, streams)
def test_summary_never_monitors_more_than_its_capacity(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary: SpaceSaving[str] = SpaceSaving(capacity)
    for key, weight in stream:
        summary.add(key, weight)
        assert len(summary) <= capacity


@given(capacities, streams)
def test_counts_sum_to_the_total_weight_recorded(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(capacity, stream)
    assert summary.total == sum(truth.values())
    assert sum(estimate.count for estimate in summary.top(capacity)) == summary.total


@given(capacities, streams)
def test_every_key_heavier_than_total_over_capacity_is_reported(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(capacity, stream)
    reported = {estimate.key for estimate in summary.top(capacity)}
    for key, weight in truth.items():
        if weight > summary.total / capacity:
            assert key in reported


@given(capacities, streams)
def test_count_overestimates_true_weight_by_at_most_the_recorded_error(
    capacity: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(capacity, stream)
    for estimate in summary.top(capacity):
        assert estimate.guaranteed <= truth[estimate.key] <= estimate.count
        assert estimate.error <= summary.total / capacity


def test_zero_weight_is_not_recorded() -> None:
    summary: SpaceSaving[str] = SpaceSaving(2)
    summary.add("quiet", 0)
    assert len(summary) == 0
    assert summary.total == 0


def test_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity must be at least 1"):
        SpaceSaving(0)
