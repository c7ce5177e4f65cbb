"""One node's store of one channel: its epoch, top offset, bounded history and dedupe keys.

The simulated counterpart of a broker used as a ring node's local store (memory, sqlite):
``append`` sequences a publication (the next offset of the epoch), ``adopt`` takes a
hand-over's publications at their given positions (``brokers.base.AdoptingStore``),
``recover`` answers a resuming subscriber by the recovery rule
(``core.recovery.decide_recovery``). History keeps the last ``history_size``
publications, evicting from the front, as every broker does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Recovery, decide_recovery


@dataclass(frozen=True, slots=True)
class SimPublication:
    """A publication as stored and sent between nodes: its position and the publisher's
    id (``key``, also its dedupe key)."""

    channel: str
    epoch: str
    offset: int
    key: str

    @property
    def position(self) -> Position:
        """Where it stands in its channel."""
        return Position(self.epoch, self.offset)

    def as_publication(self) -> Publication:
        """The core's value, for the recovery rule."""
        return Publication(
            ChannelName(self.channel), self.epoch, self.offset, self.key.encode(), 0, self.key
        )


class ChannelStore:
    """A channel's state at one node."""

    __slots__ = ("epoch", "history_size", "keys", "retained", "top")

    def __init__(self, epoch: str, history_size: int, top: int = 0) -> None:
        self.epoch = epoch
        self.top = top
        self.history_size = history_size
        self.retained: deque[SimPublication] = deque(maxlen=history_size)
        # Dedupe window: publisher key -> the position it was stored at.
        self.keys: dict[str, Position] = {}

    @property
    def position(self) -> Position:
        """The position of the last publication (offset 0: none yet)."""
        return Position(self.epoch, self.top)

    def append(self, channel: str, key: str) -> SimPublication:
        """Sequence a new publication: the next offset of the epoch."""
        publication = SimPublication(channel, self.epoch, self.top + 1, key)
        self._store(publication)
        return publication

    def adopt(self, publications: Iterable[SimPublication]) -> list[SimPublication]:
        """Store hand-over publications of this epoch at their own positions (only those
        after the top); return the ones newly stored."""
        stored = []
        for publication in publications:
            if publication.epoch == self.epoch and publication.offset > self.top:
                self._store(publication)
                stored.append(publication)
        return stored

    def recover(self, since: Position) -> Recovery:
        """What a subscriber resuming from ``since`` gets (``core.recovery``)."""
        retained = [publication.as_publication() for publication in self.retained]
        return decide_recovery(since, self.epoch, self.top, retained)

    def is_contiguous(self) -> bool:
        """Whether the history is consecutive by offset and ends at the top (what the
        recovery rule assumes of every store)."""
        offsets = [publication.offset for publication in self.retained]
        if not offsets:
            return True
        return offsets == list(range(offsets[0], offsets[0] + len(offsets))) and (
            offsets[-1] == self.top
        )

    def _store(self, publication: SimPublication) -> None:
        self.retained.append(publication)
        self.top = publication.offset
        self.keys[publication.key] = publication.position
