"""Many time-outs, one timer per grain: the deadlines of long polls and idle connections.

I/O: schedules callbacks on the running loop. Why: a timer per waiting long poll, or
per idle keep-alive connection, is created and cancelled at the rate requests come
(hundreds of long pollers re-park after every publication). Here a deadline is
rounded up to the next ``grain`` and joins the set of that grain, which has one loop
timer; cancelling is a set removal. A deadline fires at most one grain late, never
early (DESIGN.md: heartbeats and time-outs batched, no per-connection timers).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable


class Deadline:
    """One pending time-out; ``cancel`` before it fires and it never will."""

    __slots__ = ("_due", "_on_expiry")

    def __init__(self, due: set[Deadline], on_expiry: Callable[[], None]) -> None:
        self._due: set[Deadline] | None = due
        self._on_expiry = on_expiry

    def cancel(self) -> None:
        """Forget the time-out (idempotent)."""
        if self._due is not None:
            self._due.discard(self)
            self._due = None


class Deadlines:
    """Time-outs grouped by the ``grain_s`` they end in; see the module docstring."""

    __slots__ = ("_by_grain", "_grain_s")

    def __init__(self, grain_s: float) -> None:
        self._grain_s = grain_s
        self._by_grain: dict[int, set[Deadline]] = {}

    def call_after(self, delay_s: float, on_expiry: Callable[[], None]) -> Deadline:
        """Call ``on_expiry`` once ``delay_s`` has passed (up to one grain later)."""
        loop = asyncio.get_running_loop()
        grain = math.ceil((loop.time() + delay_s) / self._grain_s)
        due = self._by_grain.get(grain)
        if due is None:
            due = self._by_grain[grain] = set()
            loop.call_at(grain * self._grain_s, self._fire, grain)
        deadline = Deadline(due, on_expiry)
        due.add(deadline)
        return deadline

    def _fire(self, grain: int) -> None:
        due = self._by_grain.pop(grain, set())
        # Popped one by one from the live set: a callback that cancels another deadline
        # of this grain removes it before its turn.
        while due:
            deadline = due.pop()
            deadline._due = None
            deadline._on_expiry()
