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
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions, DedupeWindow, dedupe_key
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
