"""Retry delays: exponential backoff with full jitter, shared by the client and the brokers.

The ``n``-th retry waits a uniform random time in ``[0, min(cap, base * 2**n)]``. Full
jitter spreads a reconnect storm (every client of a restarted node, every node of a
restarted Redis) over the whole window instead of synchronised waves. Pure: the random
draw arrives as ``uniform`` (``random.uniform`` in production), so tests choose it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

# 2**32 times any base is past every cap: counting further only risks an overflow.
_MAX_DOUBLINGS: Final = 32


def backoff_ceiling_s(attempt: int, base_s: float, cap_s: float) -> float:
    """The longest wait before retry number ``attempt`` (counted from 0)."""
    return min(cap_s, base_s * 2.0 ** min(attempt, _MAX_DOUBLINGS))


@dataclass(slots=True, kw_only=True)
class Backoff:
    """Delays for one run of retries; ``reset`` after a success."""

    base_s: float
    cap_s: float
    uniform: Callable[[float, float], float]
    attempt: int = 0

    def next_delay_s(self) -> float:
        """Return the delay before the next retry and count the attempt."""
        ceiling = backoff_ceiling_s(self.attempt, self.base_s, self.cap_s)
        self.attempt += 1
        return self.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Forget past failures (after a successful connection)."""
        self.attempt = 0
