"""Reconnection delays: exponential backoff with full jitter. Pure (randomness is injected)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class Backoff:
    """The ``n``-th retry waits a uniform random time in ``[0, min(cap, base * 2**n)]``.

    Full jitter spreads a reconnect storm (every client of a restarted node) over the
    whole window instead of synchronised waves.
    """

    base_s: float = 0.2
    cap_s: float = 15.0
    uniform: Callable[[float, float], float] = random.uniform
    attempt: int = 0

    def next_delay_s(self) -> float:
        """Return the delay before the next retry and count the attempt."""
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 32))
        self.attempt += 1
        return self.uniform(0.0, ceiling)

    def reset(self) -> None:
        """Forget past failures (after a successful connection)."""
        self.attempt = 0
