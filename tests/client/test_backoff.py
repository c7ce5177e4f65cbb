"""Reconnection delays (client/backoff.py): exponential ceilings, full jitter, reset.

The rule is core/backoff.py (tests/core/test_backoff.py); these pin the client's defaults.
"""

from __future__ import annotations

from tidings.client import Backoff
from tidings.core import backoff as core_backoff


def test_delays_are_drawn_below_a_doubling_ceiling_up_to_the_cap() -> None:
    ceilings: list[float] = []

    def uniform(low: float, high: float) -> float:
        assert low == 0.0
        ceilings.append(high)
        return high / 2

    backoff = Backoff(base_s=0.1, cap_s=1.0, uniform=uniform)
    delays = [backoff.next_delay_s() for _ in range(6)]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert delays == [c / 2 for c in ceilings]


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(base_s=0.1, cap_s=10.0, uniform=lambda _low, high: high)
    for _ in range(5):
        backoff.next_delay_s()
    backoff.reset()
    assert backoff.next_delay_s() == 0.1


def test_a_long_outage_stays_at_the_cap_without_overflow() -> None:
    backoff = Backoff(base_s=0.2, cap_s=15.0, uniform=lambda _low, high: high)
    for _ in range(2000):
        delay = backoff.next_delay_s()
    assert delay == 15.0


def test_the_client_default_is_core_backoff_from_200_ms_to_15_s() -> None:
    backoff = Backoff()
    assert isinstance(backoff, core_backoff.Backoff)
    assert (backoff.base_s, backoff.cap_s) == (0.2, 15.0)
    assert all(0.0 <= backoff.next_delay_s() <= 0.2 * 2**n for n in range(8))
