"""The books of the ring scaling scenario (``ring_scaling.py``): what was acknowledged to
the publisher, what each subscriber received and was told, and the verdict per step.
Pure: times are ``time.monotonic()`` seconds handed in by the callers.

Theory of operation
-------------------
Every publication carries a sequence number ``s`` of the publisher's in its data, so a
publication can be recognised whatever epoch and offset it was given. The publisher
records an ``Ack`` for each publication the server API acknowledged (its channel, the
epoch and offset the owner assigned, when it was sent). Each subscriber keeps a
``Tally``: the (epoch, offset) pairs and sequence numbers it received, each resume
that was answered ``recovered: false`` (a ``Gap``: the position it resumed from and
the position it was given instead), and the moments it was allowed back after the
node told it to go (a reconnect).

The verdict, per subscriber and acknowledged publication of its channel:

- *lost*: never received, and no ``Gap`` the subscriber was told covers it. A ``Gap``
  covers the publications after the position it resumed from in that epoch (what the
  old owner sequenced and the new one could not recover), and those of the new epoch
  up to the position it was given (what the new owner sequenced before the client
  came back). Anything else missing is a silent gap: the failure this scenario exists
  to catch.
- *repeated*: one (epoch, offset) delivered twice to one subscriber.

A publication belongs to the step during which it was sent, and so does a silent
loss; a repeat, a ``Gap``, a reconnect, and a publication missed under a ``Gap`` (a
*covered* one: sent just before a later step moved its channel, say) belong to the
step during which they happened, or the ``Gap`` was heard.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Ack:
    """A publication the server API acknowledged."""

    seq: int
    channel: str
    epoch: str
    offset: int
    sent_s: float


@dataclass(frozen=True, slots=True)
class Gap:
    """A resume from ``(since_epoch, since_offset)`` answered ``recovered: false`` at
    ``(epoch, offset)``."""

    at_s: float
    since_epoch: str
    since_offset: int
    epoch: str
    offset: int

    def covers(self, ack: Ack) -> bool:
        """Whether the subscriber was told it may have missed ``ack``."""
        if ack.epoch == self.since_epoch and ack.offset > self.since_offset:
            return True
        return ack.epoch == self.epoch and ack.offset <= self.offset


@dataclass(slots=True)
class Tally:
    """What one subscriber received and was told."""

    channel: str
    transport: str
    seen: set[tuple[str, int]] = field(default_factory=set)
    seqs: set[int] = field(default_factory=set)
    repeats: list[float] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    reconnects: list[float] = field(default_factory=list)

    def deliver(self, epoch: str, offset: int, seq: int, now_s: float) -> None:
        """Count a publication received at ``now_s``."""
        if (epoch, offset) in self.seen:
            self.repeats.append(now_s)
            return
        self.seen.add((epoch, offset))
        self.seqs.add(seq)

    def lost(self, acks: Iterable[Ack]) -> list[Ack]:
        """The acknowledged publications of this subscriber's channel it silently missed."""
        return [
            ack
            for ack in acks
            if ack.seq not in self.seqs and not any(gap.covers(ack) for gap in self.gaps)
        ]

    def covered(self, acks: Iterable[Ack]) -> list[tuple[Ack, Gap]]:
        """The acknowledged publications it missed but was told about, each with the
        first ``Gap`` that covers it (the step that cost them is the gap's)."""
        missed = []
        for ack in acks:
            if ack.seq in self.seqs:
                continue
            gap = next((gap for gap in self.gaps if gap.covers(ack)), None)
            if gap is not None:
                missed.append((ack, gap))
        return missed

    def missing(self, acks: Iterable[Ack]) -> int:
        """How many of ``acks`` it neither received nor was told about (not yet, maybe)."""
        return len(self.lost(acks))


@dataclass(frozen=True, slots=True)
class Window:
    """A step's span: ``[start_s, end_s)``."""

    name: str
    start_s: float
    end_s: float

    def holds(self, t_s: float) -> bool:
        return self.start_s <= t_s < self.end_s


def window_of(windows: Sequence[Window], t_s: float) -> Window | None:
    """The window holding ``t_s``, if any (windows are sorted and contiguous)."""
    starts = [window.start_s for window in windows]
    index = bisect.bisect_right(starts, t_s) - 1
    if index < 0 or not windows[index].holds(t_s):
        return None
    return windows[index]


def max_in_any_second(times: Iterable[float], width_s: float = 1.0) -> int:
    """The most of ``times`` that fall in any half-open interval of ``width_s``."""
    ordered = sorted(times)
    best, first = 0, 0
    for last, t_s in enumerate(ordered):
        while ordered[first] <= t_s - width_s:
            first += 1
        best = max(best, last - first + 1)
    return best


def excess_over_rate(times: Iterable[float], start_s: float, rate: float, burst: int) -> float:
    """How far ``times`` ever ran ahead of ``burst`` + ``rate`` per second since ``start_s``:
    the most, over every moment ``t``, of ``count(times <= t) - (burst + rate * (t - start_s))``
    (at most 0: never ahead).

    The cumulative form of a rate bound, which a late reader cannot break: a reconnect
    read later than the node scheduled it only lowers the count at each moment.
    """
    worst = float("-inf")
    for count, t_s in enumerate(sorted(times), start=1):
        worst = max(worst, count - (burst + rate * max(0.0, t_s - start_s)))
    # Rounded: a reconnect exactly on its slot is not ahead by a float's rounding error.
    return round(worst, 9) if worst != float("-inf") else 0.0
