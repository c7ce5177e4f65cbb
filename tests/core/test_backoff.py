"""Retry delays (core/backoff.py): doubling ceilings up to a cap, full jitter, reset."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.backoff import Backoff, backoff_ceiling_s

bases = st.floats(min_value=0.001, max_value=10.0)
caps = st.floats(min_value=0.001, max_value=3600.0)


def highest(_low: float, high: float) -> float:
    return high


@given(base_s=bases, cap_s=caps, attempts=st.integers(min_value=1, max_value=200))
def test_ceilings_double_from_the_base_until_the_cap(
    base_s: float, cap_s: float, attempts: int
) -> None:
    ceilings = [backoff_ceiling_s(n, base_s, cap_s) for n in range(attempts)]
    assert ceilings[0] == min(cap_s, base_s)
    for before, after in itertools.pairwise(ceilings):
        assert after == min(cap_s, before * 2)


@given(base_s=bases, cap_s=caps, attempt=st.integers(min_value=0, max_value=10**6))
def test_a_ceiling_never_passes_the_cap_nor_overflows(
    base_s: float, cap_s: float, attempt: int
) -> None:
    assert 0 < backoff_ceiling_s(attempt, base_s, cap_s) <= cap_s


@given(base_s=bases, cap_s=caps, fraction=st.floats(min_value=0.0, max_value=1.0))
def test_each_delay_is_drawn_between_zero_and_the_ceiling(
    base_s: float, cap_s: float, fraction: float
) -> None:
    draws: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        draws.append((low, high))
        return low + (high - low) * fraction

    backoff = Backoff(base_s=base_s, cap_s=cap_s, uniform=uniform)
    delays = [backoff.next_delay_s() for _ in range(40)]
    assert draws == [(0.0, backoff_ceiling_s(n, base_s, cap_s)) for n in range(40)]
    assert all(0.0 <= delay <= cap_s for delay in delays)
    assert backoff.attempt == 40


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(base_s=0.05, cap_s=2.0, uniform=highest)
    assert [backoff.next_delay_s() for _ in range(3)] == [0.05, 0.1, 0.2]
    backoff.reset()
    assert backoff.next_delay_s() == 0.05
