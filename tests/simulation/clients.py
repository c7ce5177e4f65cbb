"""The simulated clients: publishers, which retry until a sequencer acknowledges, and
subscribers, which hold a position, follow moves and check what they receive.

A subscriber applies the live catch-up rule (``core.catchup``) to everything it gets:
each publication must be the next one of its position, or it was told ``recovered:
false`` first. Anything else is a violation of the hand-over's promise, recorded with
the simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tests.simulation.store import SimPublication
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.publication import Position


@dataclass(slots=True)
class Publisher:
    """One publisher's publications (by key) and the positions acknowledged to it."""

    publisher_id: int
    channel_of: dict[str, str] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)
    acked: dict[str, Position] = field(default_factory=dict)


@dataclass(slots=True)
class Segment:
    """What a subscriber received since it started or was last told ``recovered: false``."""

    start: Position
    keys: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Subscriber:
    """A subscription to one channel that stays to the end, moving from node to node."""

    subscriber_id: int
    channel: str
    position: Position | None = None
    node: str | None = None  # the node it is attached to; None while (re)connecting
    segments: list[Segment] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    gaps: list[tuple[float, str]] = field(default_factory=list)

    def start(self, position: Position) -> None:
        """Subscribed without a position: goes on from ``position`` (the channel's top)."""
        self.position = position
        self.segments.append(Segment(position))

    def receive(self, publication: SimPublication, now: float) -> None:
        """A publication arrives: it must be the next one."""
        assert self.position is not None
        step = decide_catch_up(self.position, publication.position)
        if step is not CatchUp.DELIVER:
            self.violations.append(
                f"t={now:.1f} subscriber {self.subscriber_id} ({self.channel}) at "
                f"{self.position} got {publication.position} ({step.value})"
            )
            return
        segment = self.segments[-1]
        if publication.key in segment.keys:
            self.violations.append(
                f"t={now:.1f} subscriber {self.subscriber_id} ({self.channel}) got "
                f"{publication.key} twice (again at {publication.position})"
            )
        segment.keys.append(publication.key)
        self.position = publication.position

    def told_gap(self, position: Position, reason: str, now: float) -> None:
        """Told ``recovered: false``: goes on from ``position`` with a new segment."""
        self.gaps.append((now, reason))
        self.position = position
        self.segments.append(Segment(position))
