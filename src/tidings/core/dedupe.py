"""The idempotency window of one channel (docs/protocol.md §2.4). Pure.

A publish carrying a ``key`` seen in the same channel within the window is not
published again; the window remembers the offset the key was first published at.
Keys are remembered in arrival order, so expiry only ever looks at the front. The
window is also bounded by count, so a publisher sending unique keys at a high rate
cannot grow it without limit; the oldest keys go first.

Key spaces: clients and the application's backend choose keys independently, so a
client must not be able to make a server publication vanish by publishing first with
the key the backend will use. A key is remembered under ``dedupe_key``: a server
publication (no ``info``) under the key itself, a client's under its user's own space.
A client's retry still repeats its own earlier publish, from any connection of the same
user (anonymous clients share one space: they cannot be told apart).

Hand-over (docs/modes/hashing.md, "Scaling"): a channel's new owner takes the old
owner's window whole (``entries``, then ``adopt``), each key with its original time, so
a retry at the new owner is a duplicate for exactly as long as it was at the old one,
whether or not its publication is still retained.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from tidings.core.publication import ClientInfo

# No key a publisher sends may hold this character (commands.IdempotencyKey), so a
# client's key space, which starts with it, never meets the server's.
CLIENT_KEY_MARK: Final = "\x00"


@dataclass(frozen=True, slots=True)
class DedupeOptions:
    """Remember keys for ``window_ms`` milliseconds, at most ``max_keys`` per channel."""

    window_ms: int = 300_000
    max_keys: int = 100_000


def dedupe_key(key: str, info: ClientInfo | None) -> str:
    """Return what ``key`` is remembered under, given who published (see the module docstring).

    Server keys are kept as they are (so keys stored by earlier versions still match);
    a client's key is prefixed with the mark and its user, length first so that no two
    (user, key) pairs give the same string.
    """
    if info is None:
        return key
    return f"{CLIENT_KEY_MARK}{len(info.user)}:{info.user}{key}"


@dataclass(frozen=True, slots=True)
class RememberedKey:
    """A key inside a channel's window: remembered as ``key`` (``dedupe_key``'s form),
    first published at ``offset``, at ``ts`` (ms)."""

    key: str
    offset: int
    ts: int


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

    def entries(self, now_ms: int) -> tuple[RememberedKey, ...]:
        """Return the keys inside the window at ``now_ms``, oldest first."""
        self.expire(now_ms)
        return tuple(RememberedKey(k, offset, ts) for k, (offset, ts) in self._keys.items())

    def adopt(self, keys: Iterable[RememberedKey]) -> None:
        """Remember ``keys`` handed over from another node at their own times (never
        renewed: the window is not extended by the move). A key already remembered keeps
        what it has. The oldest go first beyond ``max_keys``, as in ``remember``."""
        added = [k for k in keys if k.key not in self._keys]
        if not added:
            return
        merged = [(k, offset, ts) for k, (offset, ts) in self._keys.items()]
        merged.extend((k.key, k.offset, k.ts) for k in added)
        # Expiry reads the front only: the order must stay the order of times (then of
        # offsets, the order in which one time's keys were remembered).
        merged.sort(key=lambda entry: (entry[2], entry[1]))
        del merged[: max(0, len(merged) - self._options.max_keys)]
        self._keys = {k: (offset, ts) for k, offset, ts in merged}

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
