"""The idempotency window of one channel (PROTOCOL.md §2.4). Pure.

A publish carrying a ``key`` seen in the same channel within the window is not
published again; the window remembers the offset the key was first published at.
Keys are remembered in arrival order, so expiry only ever looks at the front. The
window is also bounded by count, so a publisher sending unique keys at a high rate
cannot grow it without limit; the oldest keys go first.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DedupeOptions:
    """Remember keys for ``window_ms`` milliseconds, at most ``max_keys`` per channel."""

    window_ms: int = 300_000
    max_keys: int = 100_000


class DedupeWindow:
    """Keys published recently in one channel and the offsets they got."""

    __slots__ = ("_keys", "_options")

    def __init__(self, options: DedupeOptions) -> None:
        self._options = options
        # key -> (offset, first seen at ms); dicts keep insertion order.
        self._keys: dict[str, tuple[int, int]] = {}

    def lookup(self, key: str, now_ms: int) -> int | None:
        """Return the offset ``key`` was published at, if within the window."""
        self.expire(now_ms)
        seen = self._keys.get(key)
        return None if seen is None else seen[0]

    def remember(self, key: str, offset: int, now_ms: int) -> None:
        """Record that ``key`` was published at ``offset``."""
        # Re-inserted, not updated in place: the order must stay the order of times.
        self._keys.pop(key, None)
        self._keys[key] = (offset, now_ms)
        while len(self._keys) > self._options.max_keys:
            del self._keys[next(iter(self._keys))]

    def expire(self, now_ms: int) -> None:
        """Forget the keys older than the window."""
        keys = self._keys
        oldest_allowed = now_ms - self._options.window_ms
        while keys:
            first = next(iter(keys))
            if keys[first][1] >= oldest_allowed:
                break
            del keys[first]

    def __len__(self) -> int:
        return len(self._keys)
