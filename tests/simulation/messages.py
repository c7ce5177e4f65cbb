"""What the simulated nodes send one another (the network delays, reorders and may
duplicate them) and what they send publishers and subscribers."""

from __future__ import annotations

from dataclasses import dataclass

from tests.simulation.store import SimPublication
from tidings.core.publication import Position


@dataclass(frozen=True, slots=True)
class Publish:
    """A publisher's publication, sent to a node or forwarded by one (``hops`` so far)."""

    publisher: int
    channel: str
    key: str
    hops: int = 0


@dataclass(frozen=True, slots=True)
class Replica:
    """A giver's hand-over message for one channel: a snapshot (its whole state) or the
    next publications of its stream, in the ring version the giver acts on."""

    version: int
    channel: str
    epoch: str
    top: int
    publications: tuple[SimPublication, ...]
    snapshot: bool
    # A snapshot's dedupe window: every key the giver stored, with its position (history
    # may have evicted the publication while the publisher may still retry it).
    keys: tuple[tuple[str, Position], ...] = ()

    @property
    def first(self) -> Position:
        """The first publication's position; for an empty snapshot, the top's successor."""
        if self.publications:
            return self.publications[0].position
        return Position(self.epoch, self.top + 1)


@dataclass(frozen=True, slots=True)
class ReplicaAck:
    """A receiver's answer: the position it now holds for the channel."""

    channel: str
    held: Position


@dataclass(frozen=True, slots=True)
class Resync:
    """A receiver's answer to a message that does not follow what it holds."""

    channel: str


NodeMessage = Publish | Replica | ReplicaAck | Resync
