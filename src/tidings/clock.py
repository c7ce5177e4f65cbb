"""Wall-clock time for the parts that need it; the core takes time as arguments instead."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Gives the current time in milliseconds since the Unix epoch."""

    def now_ms(self) -> int:
        """Return the current wall-clock time in milliseconds."""
        ...


class SystemClock:
    """The machine's wall clock."""

    __slots__ = ()

    def now_ms(self) -> int:
        """Return ``time.time()`` in whole milliseconds."""
        return time.time_ns() // 1_000_000
