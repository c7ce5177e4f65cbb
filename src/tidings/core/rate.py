"""A token bucket: the per-connection command rate limit (docs/protocol.md §7). Pure.

Time arrives as ``now_s`` (a monotonic clock in seconds) so the rule is testable.
"""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` commands per second on average, bursts of up to ``burst``."""

    __slots__ = ("_last_s", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now_s: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last_s = now_s

    def take(self, now_s: float) -> bool:
        """Spend one token if there is one; whether the command may run."""
        elapsed = max(0.0, now_s - self._last_s)
        self._last_s = now_s
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
