"""One channel's retained publications, bounded by count and by age. Pure.

Publications are appended in offset order and evicted only from the front (oldest
first), so the retained ones are always consecutive: the invariant ``decide_recovery``
relies on. Time arrives as ``now_ms`` arguments; nothing here reads a clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from tidings.core.publication import Position, Publication
from tidings.core.recovery import Recovery, decide_recovery, latest


@dataclass(frozen=True, slots=True)
class HistoryOptions:
    """How much of a channel's past is kept: at most ``size`` publications, each for
    at most ``ttl_ms`` milliseconds. ``size == 0`` keeps nothing."""

    size: int
    ttl_ms: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"history size must be >= 0, got {self.size}")
        if self.ttl_ms <= 0:
            raise ValueError(f"history ttl must be > 0 ms, got {self.ttl_ms}")


class ChannelHistory:
    """The retained publications of one channel in one epoch."""

    __slots__ = ("_options", "_retained")

    def __init__(self, options: HistoryOptions) -> None:
        self._options = options
        self._retained: deque[Publication] = deque()

    def retain(self, publication: Publication, now_ms: int) -> None:
        """Keep ``publication`` (the channel's next one) and evict what is now too old."""
        retained = self._retained
        if retained:
            assert publication.offset == retained[-1].offset + 1, "offsets must be consecutive"
        if self._options.size == 0:
            return
        retained.append(publication)
        while len(retained) > self._options.size:
            retained.popleft()
        self.expire(now_ms)

    def expire(self, now_ms: int) -> None:
        """Evict publications older than the time-to-live."""
        retained = self._retained
        oldest_allowed = now_ms - self._options.ttl_ms
        while retained and retained[0].ts < oldest_allowed:
            retained.popleft()

    def since(
        self, position: Position, epoch: str, head_offset: int, now_ms: int, limit: int | None
    ) -> Recovery:
        """Decide what a client at ``position`` gets (see ``decide_recovery``)."""
        self.expire(now_ms)
        return decide_recovery(position, epoch, head_offset, self._retained, limit)

    def latest(self, now_ms: int, limit: int | None) -> tuple[Publication, ...]:
        """Return the last ``limit`` retained publications, oldest first."""
        self.expire(now_ms)
        return latest(self._retained, limit)

    def __len__(self) -> int:
        return len(self._retained)
