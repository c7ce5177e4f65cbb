"""The sequencing state of one channel: epoch, head offset, history and dedupe window. Pure.

A broker that sequences publications itself (memory, sqlite) keeps one ``ChannelLog``
per channel. ``append`` is the whole publish rule: a repeated idempotency key yields the
original position; anything else becomes the next offset, retained in history. Brokers
that sequence elsewhere (a Lua script in Redis) implement the same rule there and are
held to it by the broker contract tests.

Idle channels: history and keys expire by time, but a log only looks at the time when
it is used. A broker's periodic sweep calls ``expire``; a log it says is *bare* (no
publication retained, no key remembered) holds nothing recovery needs beyond its epoch
and head offset, so the broker may keep just those and drop the log: a client at the
head is then recovered with nothing to replay, and an older position is a gap, exactly
as the bare log would have answered.

Adoption (the ring's hand-over, docs/modes/hashing.md "Scaling"): a node that receives a
channel from its old owner stores the publications it is sent *at their positions*, not
sequenced anew. ``plan_adoption`` is the one rule for what such a store keeps: the
publications it does not hold yet, continuing its head; and whether its state must be
replaced first (another epoch, or a hole between its head and what it was sent: a
snapshot of what the giver retains). The giver's dedupe window moves beside its
retained publications (``remembered_keys``, ``adopt_keys``): a key outlives its
publication's eviction, and must outlive it on the new owner too. A restart past a hole
in the epoch held keeps the keys remembered (they name offsets of that epoch, still
true), so a giver re-sending a snapshot sends only the keys it has not sent yet; a
restart in another epoch forgets them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions, DedupeWindow, RememberedKey, dedupe_key
from tidings.core.history import ChannelHistory, HistoryOptions
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Recovery


@dataclass(frozen=True, slots=True)
class Appended:
    """The data became ``publication``, the channel's new head."""

    publication: Publication


@dataclass(frozen=True, slots=True)
class Duplicate:
    """The key was already published, at ``position``; nothing was appended."""

    position: Position


class ChannelLog:
    """Epoch, head offset, retained history and recent keys of one channel."""

    __slots__ = ("_dedupe", "_history", "channel", "epoch", "head_offset")

    def __init__(
        self,
        channel: ChannelName,
        epoch: str,
        history: HistoryOptions,
        dedupe: DedupeOptions,
        head_offset: int = 0,
    ) -> None:
        self.channel = channel
        self.epoch = epoch
        self.head_offset = head_offset
        self._history = ChannelHistory(history)
        self._dedupe = DedupeWindow(dedupe)

    @property
    def head(self) -> Position:
        """The position of the channel's last publication (offset 0 before the first)."""
        return Position(self.epoch, self.head_offset)

    def append(
        self, data: bytes, now_ms: int, key: str | None = None, info: ClientInfo | None = None
    ) -> Appended | Duplicate:
        """Sequence ``data`` as the channel's next publication, unless ``key`` repeats.

        Returns:
            ``Appended`` with the new publication (the caller then stores and delivers
            it), or ``Duplicate`` with the original's position (the caller delivers
            nothing).
        """
        if key is not None:
            offset = self._dedupe.lookup(dedupe_key(key, info), now_ms)
            if offset is not None:
                return Duplicate(Position(self.epoch, offset))
        publication = Publication(
            self.channel, self.epoch, self.head_offset + 1, data, now_ms, key, info
        )
        self.restore(publication, now_ms)
        return Appended(publication)

    def restore(self, publication: Publication, now_ms: int) -> None:
        """Take ``publication`` (the next offset) as already sequenced: on load from disk."""
        assert publication.offset == self.head_offset + 1, "offsets must be gap-free"
        self.head_offset = publication.offset
        self._history.retain(publication, now_ms)
        if publication.key is not None:
            remembered = dedupe_key(publication.key, publication.info)
            self._dedupe.remember(remembered, publication.offset, publication.ts)

    def remembered_keys(self, now_ms: int) -> tuple[RememberedKey, ...]:
        """Return the keys inside the dedupe window at ``now_ms``, oldest first (those of
        publications no longer retained too)."""
        return self._dedupe.entries(now_ms)

    def adopt_keys(self, keys: Iterable[RememberedKey]) -> None:
        """Remember ``keys`` of this epoch handed over from the channel's old owner, at
        their original times (``DedupeWindow.adopt``)."""
        self._dedupe.adopt(keys)

    def expire(self, now_ms: int) -> bool:
        """Drop the publications and keys that are too old at ``now_ms``.

        Returns:
            Whether the log is now bare: only its epoch and head offset matter (see the
            module docstring).
        """
        self._history.expire(now_ms)
        self._dedupe.expire(now_ms)
        return not self._history and not self._dedupe

    def since(self, position: Position, now_ms: int, limit: int | None = None) -> Recovery:
        """Decide what a client at ``position`` gets (``decide_recovery``)."""
        return self._history.since(position, self.epoch, self.head_offset, now_ms, limit)

    def latest(self, now_ms: int, limit: int | None = None) -> tuple[Publication, ...]:
        """Return the last ``limit`` retained publications, oldest first."""
        return self._history.latest(now_ms, limit)


@dataclass(frozen=True, slots=True)
class Adoption:
    """What a store does with publications it is handed at their positions.

    Attributes:
        restart_at: ``None`` to append ``publications`` to the channel as it is; else
            drop the channel's state and restart it in the adopted epoch with head
            ``restart_at``, then append.
        publications: the ones not held yet, consecutive, continuing the head.
        head: the channel's head offset once they are appended.
        keeps_keys: whether the channel's remembered keys stay: always but in a restart
            in another epoch (or of a channel not held), whose keys name offsets of an
            epoch the channel no longer has. A restart past a hole in the epoch held
            keeps them: their offsets stay true, only the history has a hole.
    """

    restart_at: int | None
    publications: tuple[Publication, ...]
    head: int
    keeps_keys: bool


def plan_adoption(
    held: Position | None, epoch: str, publications: Sequence[Publication], top: int
) -> Adoption:
    """Decide what a store holding ``held`` (``None``: not the channel at all) keeps of
    ``publications`` of ``epoch``, sent by a giver whose head is at ``top``.

    Publications at or below the held offset of the same epoch are already held and
    skipped. The rest are kept after the held head when they follow it; otherwise
    (another epoch, a hole, nothing held) the channel restarts just before the first of
    them, or at ``top`` when none is left (history that retains nothing still moves its
    head). A ``top`` at or below the held head of the same epoch, with nothing new, keeps
    everything as it is. The remembered keys stay unless the epoch changes
    (``Adoption.keeps_keys``).

    Raises:
        ValueError: ``publications`` are not consecutive offsets of ``epoch`` ending at or
            below ``top`` (a misuse: the giver sends them so).
    """
    for earlier, later in pairwise(publications):
        if later.offset != earlier.offset + 1:
            raise ValueError("adopted publications must have consecutive offsets")
    if any(p.epoch != epoch for p in publications):
        raise ValueError(f"adopted publications must all be of epoch {epoch}")
    if publications and publications[-1].offset != top:
        raise ValueError(f"adopted publications must end at the giver's head {top}")
    if held is not None and held.epoch == epoch:
        fresh = tuple(p for p in publications if p.offset > held.offset)
        if not fresh:
            if top <= held.offset:
                return Adoption(None, (), held.offset, keeps_keys=True)
            return Adoption(top, (), top, keeps_keys=True)
        if fresh[0].offset == held.offset + 1:
            return Adoption(None, fresh, fresh[-1].offset, keeps_keys=True)
        return Adoption(fresh[0].offset - 1, fresh, fresh[-1].offset, keeps_keys=True)
    if not publications:
        return Adoption(top, (), top, keeps_keys=False)
    start, last = publications[0].offset - 1, publications[-1].offset
    return Adoption(start, tuple(publications), last, keeps_keys=False)
