"""A node's live view of one channel: its head and its latest publications. Pure.

Polls ask "what is there after this position?" many times a second for the same few
channels. A ``ChannelWatch`` fed by a live hub subscription answers most of them
without asking the broker: a position at the head gets ``Replay(())`` (nothing new), a
position among the last ``keep`` publications gets the publications after it. Any
other position (another epoch, ahead of the head as this node knows it, older than
what is kept) gets ``None``: the caller must read the broker's history, which alone
can tell a gap from a lag.

The watch must see every publication of the channel in offset order from its start
(the hub guarantees that for a live subscription, and reports a gap otherwise: then
the watch is dropped, never patched).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Replay, decide_recovery


class ChannelWatch:
    """The head of one channel and its last ``keep`` publications."""

    __slots__ = ("_recent", "head")

    def __init__(self, head: Position, recent: Iterable[Publication], keep: int) -> None:
        """Start at ``head``; ``recent`` are publications up to it, consecutive."""
        self.head = head
        self._recent: deque[Publication] = deque(
            (p for p in recent if p.epoch == head.epoch), maxlen=keep
        )
        if self._recent:
            assert self._recent[-1].offset == head.offset, "recent must end at the head"

    def receive_publication(self, publication: Publication) -> None:
        """Advance to ``publication``, the channel's next one.

        Raises:
            ValueError: it does not follow the head (the caller must drop the watch).
        """
        head = self.head
        if decide_catch_up(head, publication.position) is not CatchUp.DELIVER:
            raise ValueError(f"{publication.position} does not follow {head}")
        self._recent.append(publication)
        self.head = publication.position

    def since(self, position: Position, limit: int) -> Replay | None:
        """Return the publications after ``position`` (at most ``limit``), or ``None``
        when only the broker can tell (see the module docstring)."""
        head = self.head
        if position.epoch == head.epoch and position.offset == head.offset:
            return Replay(())
        recovery = decide_recovery(position, head.epoch, head.offset, self._recent, limit)
        return recovery if isinstance(recovery, Replay) else None
