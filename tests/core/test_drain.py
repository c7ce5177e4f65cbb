"""The drain schedule (core/drain.py): disconnects within the window, and reconnect slots
that never exceed the rate, in any second or cumulatively."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.drain import DrainStep, plan_drain

counts = st.integers(min_value=0, max_value=3_000)
windows = st.integers(min_value=0, max_value=20_000)
rates = st.one_of(
    st.integers(min_value=1, max_value=5_000).map(float),
    st.floats(min_value=0.5, max_value=5_000.0, allow_nan=False, allow_infinity=False),
)


@given(counts, windows, rates)
def test_every_disconnect_is_sent_within_the_window_in_order(
    count: int, window_ms: int, rate: float
) -> None:
    steps = plan_drain(count, window_ms, rate)
    at = [step.disconnect_at_ms for step in steps]
    assert len(steps) == count
    assert at == sorted(at)
    assert all(0 <= t < max(window_ms, 1) for t in at)


@given(counts, windows, rates)
def test_no_second_holds_more_reconnect_slots_than_the_rate(
    count: int, window_ms: int, rate: float
) -> None:
    slots = [step.reconnect_at_ms for step in plan_drain(count, window_ms, rate)]
    allowed = math.ceil(rate)
    assert slots == sorted(slots)
    # A half-open second [t, t + 1000) holding allowed + 1 slots would hold two slots
    # ``allowed`` apart in the list less than 1000 ms apart.
    assert all(slots[i + allowed] - slots[i] >= 1000 for i in range(len(slots) - allowed))


@given(counts, windows, rates)
def test_reconnects_never_run_ahead_of_the_rate_since_the_drain_began(
    count: int, window_ms: int, rate: float
) -> None:
    steps = plan_drain(count, window_ms, rate)
    assert all(step.reconnect_at_ms >= k * 1000 / rate - 1e-6 for k, step in enumerate(steps))
    assert all(step.reconnect_at_ms >= step.disconnect_at_ms for step in steps)


def test_a_small_drain_is_sent_at_the_rate_not_stretched_over_the_window() -> None:
    steps = plan_drain(3, 3_000, 1_000.0)
    assert steps == [DrainStep(0, 0), DrainStep(1, 1), DrainStep(2, 2)]


def test_a_large_drain_disconnects_within_the_window_and_delays_the_rest() -> None:
    steps = plan_drain(1_000, 2_000, 200.0)
    assert steps[-1] == DrainStep(1_998, 4_995)
    assert steps[-1].delay_ms(1_998) == 2_997


def test_the_delay_counts_from_when_the_disconnect_is_sent() -> None:
    step = DrainStep(disconnect_at_ms=100, reconnect_at_ms=500)
    assert (step.delay_ms(100), step.delay_ms(350.7), step.delay_ms(900)) == (400, 150, 0)


@pytest.mark.parametrize(("count", "window", "rate"), [(-1, 0, 1.0), (1, -1, 1.0), (1, 0, 0.0)])
def test_nonsense_arguments_are_refused(count: int, window: int, rate: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        plan_drain(count, window, rate)
