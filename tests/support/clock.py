"""A clock that moves only when a test says so."""

from __future__ import annotations

from typing import Final

START_MS: Final = 1_763_790_000_000


class FakeClock:
    """A ``Clock`` standing still at ``now_ms`` until ``advance`` is called."""

    __slots__ = ("_now_ms",)

    def __init__(self, now_ms: int = START_MS) -> None:
        self._now_ms = now_ms

    def now_ms(self) -> int:
        """Return the current fake time in milliseconds."""
        return self._now_ms

    def advance(self, ms: int) -> None:
        """Move the time forward by ``ms`` milliseconds."""
        if ms < 0:
            raise ValueError(f"a clock only moves forward; got {ms} ms")
        self._now_ms += ms
