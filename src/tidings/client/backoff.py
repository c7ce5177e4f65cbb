"""Reconnection delays: ``core.backoff`` with the client's defaults and ``random`` drawing.

The rule itself (exponential ceilings, full jitter) lives in ``tidings.core.backoff``,
shared with the brokers' reconnects; this adds what an application wants by default.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from tidings.core import backoff


@dataclass(slots=True)
class Backoff(backoff.Backoff):
    """The ``n``-th retry waits a uniform random time in ``[0, min(cap, base * 2**n)]``.

    Full jitter spreads a reconnect storm (every client of a restarted node) over the
    whole window instead of synchronised waves.
    """

    base_s: float = 0.2
    cap_s: float = 15.0
    uniform: Callable[[float, float], float] = random.uniform
    attempt: int = 0
