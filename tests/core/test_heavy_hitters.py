"""The heavy-hitters summary (core/heavy_hitters.py): bounded whatever the stream, every
heavy key reported, and counts that bound true figures (hits and weight) from above
within their errors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.heavy_hitters import HeavyHitters

keeps = st.integers(min_value=1, max_value=12)
# Room above 2k: the smallest limits purge most often.
slacks = st.integers(min_value=1, max_value=20)
# Few distinct keys make heavy ones; weights of 0 (a publication nobody received) too.
streams = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=59).map(lambda n: f"k{n}"),
        st.integers(min_value=0, max_value=50),
    ),
    max_size=400,
)


class Truth:
    """What the summary should approximate: every key's exact figures."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.weight: Counter[str] = Counter()


def _summarise(
    keep: int, slack: int, stream: list[tuple[str, int]]
) -> tuple[HeavyHitters[str], Truth]:
    summary: HeavyHitters[str] = HeavyHitters(keep, 2 * keep + slack)
    truth = Truth()
    for key, weight in stream:
        summary.add(key, weight)
        truth.hits[key] += 1
        truth.weight[key] += weight
    return summary, truth


@given(keeps, slacks, streams)
def test_summary_never_counts_more_than_its_limit(
    keep: int, slack: int, stream: list[tuple[str, int]]
) -> None:
    summary: HeavyHitters[str] = HeavyHitters(keep, 2 * keep + slack)
    for key, weight in stream:
        summary.add(key, weight)
        assert len(summary) <= 2 * keep + slack


@given(keeps, slacks, streams)
def test_every_key_heavier_than_total_over_keep_plus_one_is_counted(
    keep: int, slack: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(keep, slack, stream)
    counted = set(summary.keys())
    total_hits, total_weight = truth.hits.total(), truth.weight.total()
    for key in truth.hits:
        if truth.hits[key] > total_hits / (keep + 1):
            assert key in counted
        if truth.weight[key] > total_weight / (keep + 1):
            assert key in counted


@given(keeps, slacks, streams)
def test_counts_overestimate_true_figures_by_at_most_their_errors(
    keep: int, slack: int, stream: list[tuple[str, int]]
) -> None:
    summary, truth = _summarise(keep, slack, stream)
    assert summary.hits_offset <= truth.hits.total() / (keep + 1)
    assert summary.weight_offset <= truth.weight.total() / (keep + 1)
    for estimate in summary.top(len(summary)):
        assert estimate.hits - estimate.hits_error <= truth.hits[estimate.key] <= estimate.hits
        assert (
            estimate.weight - estimate.weight_error <= truth.weight[estimate.key] <= estimate.weight
        )
        assert (estimate.hits_error, estimate.weight_error) == (
            summary.hits_offset,
            summary.weight_offset,
        )
    for key in truth.hits:  # one not counted has each figure at most its offset
        if summary.estimate(key) is None:
            assert truth.hits[key] <= summary.hits_offset
            assert truth.weight[key] <= summary.weight_offset


@given(keeps, slacks, streams)
def test_each_purge_takes_its_offset_from_at_least_keep_plus_one_counts(
    keep: int, slack: int, stream: list[tuple[str, int]]
) -> None:
    # What the counts hold is the total less what purges took: at least (k+1) times
    # the offset, which is why the offset is at most the total over k+1.
    summary, truth = _summarise(keep, slack, stream)
    estimates = summary.top(len(summary))
    held_hits = sum(estimate.hits - estimate.hits_error for estimate in estimates)
    held_weight = sum(estimate.weight - estimate.weight_error for estimate in estimates)
    assert held_hits <= truth.hits.total() - (keep + 1) * summary.hits_offset
    assert held_weight <= truth.weight.total() - (keep + 1) * summary.weight_offset


@given(keeps, slacks, streams)
def test_a_purge_keeps_at_most_twice_keep(
    keep: int, slack: int, stream: list[tuple[str, int]]
) -> None:
    summary: HeavyHitters[str] = HeavyHitters(keep, 2 * keep + slack)
    for key, weight in stream:
        offsets = (summary.hits_offset, summary.weight_offset)
        summary.add(key, weight)
        if (summary.hits_offset, summary.weight_offset) != offsets:
            assert len(summary) <= 2 * keep


def test_a_new_key_purges_only_past_the_limit() -> None:
    summary: HeavyHitters[str] = HeavyHitters(1, 3)
    for key, weight in (("a", 5), ("b", 1), ("c", 2)):
        summary.add(key, weight)
    assert (len(summary), summary.hits_offset) == (3, 0)
    summary.add("d", 3)  # the fourth key: hits all 1, the 2nd largest weight is 3
    assert (summary.hits_offset, summary.weight_offset) == (1, 3)
    assert [(e.key, e.hits, e.weight) for e in summary.top(4)] == [("a", 1, 5)]


def test_one_dominant_key_makes_the_cut_the_second_largest_not_its_own() -> None:
    summary: HeavyHitters[str] = HeavyHitters(1, 3)
    for key in ("a", "a", "a", "a", "a", "b", "c", "d"):  # "d" is the fourth key
        summary.add(key, 0)
    assert summary.hits_offset == 1  # at most 8 / 2; "a"'s 5 would have been too much
    assert [(e.key, e.hits, e.hits_error) for e in summary.top(4)] == [("a", 5, 1)]


def test_top_lists_the_heaviest_first() -> None:
    summary: HeavyHitters[str] = HeavyHitters(4, 16)
    for key, weight in (("a", 3), ("b", 10), ("c", 0), ("b", 1), ("c", 0), ("c", 0)):
        summary.add(key, weight)
    assert [(e.key, e.hits, e.weight) for e in summary.top(3)] == [
        ("b", 2, 11),
        ("a", 1, 3),
        ("c", 3, 0),
    ]


def test_keep_below_one_or_limit_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        HeavyHitters(0, 10)
    with pytest.raises(ValueError, match="limit must exceed"):
        HeavyHitters(4, 8)
