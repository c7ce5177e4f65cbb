"""The positions of a subscription's channels: duplicate filtering and gap detection.

Pure: no I/O, no asyncio. Every transport of the client feeds what the server sends
into one ``PositionTracker`` and yields what it returns, so the rules below hold
whichever transport carried a publication, and across switches between them.

Theory of operation
-------------------
The tracker holds, per channel, the position of the last publication it let through
(or the position a subscription started from). Inputs:

* ``receive_subscribed``: the server's answer to a subscribe (WebSocket reply, SSE
  ``subscribed``): the channel's position after any replay, and whether the position
  the client gave was ``recovered``;
* ``receive_publication``: a publication, replayed or live;
* ``receive_page``: a poll answer: publications and the positions after them.

Invariants, per channel:

1. **No duplicates.** A publication at or below the held offset of the held epoch is
   dropped (a replay overlapping what arrived live, a redelivery after a reconnect),
   and so is any publication of an epoch the channel has left.
2. **Never backwards within an epoch.** Offsets of an epoch name one publication each
   for good (docs/protocol.md §1), so a position the server gives that is behind what the
   tracker already holds in that epoch moves nothing (a node that has not loaded, or
   not replicated, the channel yet): the channel stays, and the next resume asks from
   where it is. Together with 1, no ``(epoch, offset)`` is let through twice, whatever
   the server sends.
3. **In order, nothing skipped silently.** A publication is let through when it is
   the held offset + 1 of the held epoch (the server's rule, ``tidings.core.catchup``).
   Anything else ahead of the held position (a jump, an epoch change) is let through
   *after* a ``GapNotice`` from the held position to the one just before it. The
   server never skips without saying so (docs/protocol.md §2.3), so this is a defence, and
   the application still hears of it.
4. **Gaps are told.** A subscribe answered ``recovered: false`` for a channel whose
   position was given yields a ``GapNotice`` and moves to the server's position.
   Without a position there is nothing to recover: the channel starts where the
   server says (its *origin*), with no notice.

``positions`` is what to resume from: hand it to any transport (``since=``), or to a
new subscription, and the server sends exactly what follows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from tidings.client.events import Event, GapNotice
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.cursor import decode_cursor
from tidings.core.publication import Position, Publication
from tidings.errors import BadRequest

# Where a channel without a position resumes from, when others have one: an epoch that
# no server draws (epochs are random; this one names itself), so never recovered.
UNKNOWN_POSITION: Final = Position("unknown-position", 0)


class PositionTracker:
    """The positions of one subscription's channels; see the module docstring."""

    __slots__ = ("_highest", "_origins", "_positions", "channels")

    def __init__(
        self,
        channels: Sequence[ChannelName],
        since: Mapping[ChannelName, Position] | None = None,
    ) -> None:
        """Track ``channels``, resuming those in ``since`` after the given positions.

        Raises:
            ValueError: no channel, a channel listed twice, or a position in ``since``
                for a channel not in ``channels``.
        """
        if not channels:
            raise ValueError("subscribe at least one channel")
        if len(set(channels)) != len(channels):
            raise ValueError(f"a channel is listed twice in {list(channels)}")
        given = dict(since or {})
        unknown = sorted(set(given) - set(channels))
        if unknown:
            raise ValueError(f"since names channels that are not subscribed: {unknown}")
        self.channels: tuple[ChannelName, ...] = tuple(channels)
        self._positions: dict[ChannelName, Position] = given
        self._origins: dict[ChannelName, Position] = dict(given)
        # Per channel, the highest offset held in each epoch it has been in: the epochs
        # other than the held one are those it left (invariants 1 and 2).
        self._highest: dict[ChannelName, dict[str, int]] = {
            channel: {position.epoch: position.offset} for channel, position in given.items()
        }

    @property
    def positions(self) -> dict[ChannelName, Position]:
        """The position of every channel that has one (a copy)."""
        return dict(self._positions)

    @property
    def origins(self) -> dict[ChannelName, Position]:
        """Where each channel started before any event of it: the ``since`` given, or
        the server's position when a channel without one was subscribed (a copy)."""
        return dict(self._origins)

    def has_all_positions(self) -> bool:
        """Whether every channel has a position (a resume can name them all)."""
        return len(self._positions) == len(self.channels)

    def part(self, channels: Sequence[ChannelName]) -> PositionTracker:
        """Return a tracker of ``channels`` (some of ours) holding exactly what this one
        holds of them: how a subscription splits when owner routing (docs/protocol.md §9)
        sends some channels to another node and keeps the rest.

        Raises:
            ValueError: no channel, a repeat, or a channel this tracker does not track.
        """
        unknown = sorted(set(channels) - set(self.channels))
        if unknown:
            raise ValueError(f"not tracked here: {unknown}")
        part = PositionTracker(channels)
        part._positions = {c: p for c, p in self._positions.items() if c in channels}
        part._origins = {c: p for c, p in self._origins.items() if c in channels}
        part._highest = {c: dict(h) for c, h in self._highest.items() if c in channels}
        return part

    # -- inputs ----------------------------------------------------------------------------

    def receive_subscribed(
        self, channel: ChannelName, position: Position, *, recovered: bool
    ) -> list[Event]:
        """Take the server's answer to subscribing ``channel``.

        Args:
            channel: the channel subscribed.
            position: its position after the publications the answer replays.
            recovered: whether the server could recover the position the subscribe
                gave (``self.positions`` when it was made).

        Returns:
            A ``GapNotice`` if a position was given and not recovered; nothing
            otherwise. Then feed the replayed publications to ``receive_publication``.
        """
        held = self._positions.get(channel)
        if held is None:
            self._start(channel, position)
            return []
        if recovered:
            return []  # the replay brings the channel from ``held`` to ``position``
        return self._move(channel, position)

    def receive_publication(self, publication: Publication) -> list[Event]:
        """Take one publication, replayed or live.

        Returns:
            ``[]`` for a duplicate, ``[publication]`` for the next one, or
            ``[GapNotice, publication]`` when it is not the next one (invariant 2).
        """
        channel = publication.channel
        if channel not in self.channels:
            return []
        held = self._positions.get(channel)
        # Every epoch the channel held counts as left: the held one is judged by offset.
        outcome = decide_catch_up(held, publication.position, self._highest.get(channel, ()))
        if outcome is CatchUp.ALREADY_HAD:
            return []
        events: list[Event] = []
        if outcome is not CatchUp.DELIVER:  # a hole or another epoch: told, then let through
            events = self._move(channel, Position(publication.epoch, publication.offset - 1))
        self._hold(channel, publication.position)
        return [*events, publication]

    def receive_page(
        self,
        publications: Sequence[Publication],
        after: Mapping[ChannelName, Position],
        *,
        recovered: bool,
    ) -> list[Event]:
        """Take a poll answer (docs/protocol.md §5).

        Args:
            publications: the answer's publications, in the server's order.
            after: its ``positions`` (each channel's position after the publications).
            recovered: the answer's flag: false when some channel's position was not
                recovered (or some channel had none).

        Returns:
            Gap notices for channels the server moved rather than replayed, then the
            publications that are new.
        """
        firsts: dict[ChannelName, Publication] = {}
        for publication in publications:
            firsts.setdefault(publication.channel, publication)
        events: list[Event] = []
        for channel in self.channels:
            if channel not in after:
                continue
            first = firsts.get(channel)
            # Where the server took this channel from: before its first publication
            # here, or (none here) where the cursor leaves it.
            start = Position(first.epoch, first.offset - 1) if first else after[channel]
            held = self._positions.get(channel)
            if held is None:
                self._start(channel, start)
            elif start != held:
                # The answer's flag is for all channels; the channel whose start moved
                # is the one that was not recovered (a recovered one starts at ``held``).
                events += self._move(channel, start)
        for publication in publications:
            events.extend(self.receive_publication(publication))
        return events

    # -- resuming over HTTP --------------------------------------------------------------

    def resume_cursor(self, cursor: str | None) -> str | None:
        """Return ``cursor`` (the server's last one) if it names exactly our positions.

        A cursor is opaque to clients by docs/protocol.md §1; this client ships in the same
        package as the server and decodes it (``tidings.core.cursor``) to learn its
        positions. A tidings server of another version could change the layout: then
        ``None``, and the caller resumes with ``since_params`` instead. (SSE needs this:
        its events carry cursors, not positions. Poll answers carry ``positions``, so
        polling compares those instead and never decodes.)
        """
        if cursor is None:
            return None
        try:
            named = decode_cursor(cursor)
        except BadRequest:
            return None
        return cursor if named == self._positions else None

    def since_params(self) -> list[tuple[str, str]]:
        """Return the query parameters resuming every channel from its position.

        ``since=<epoch>:<offset>`` once per ``channel=``, in the same order (docs/protocol.md
        §4, §5), when any channel has a position. A channel without one gets a position
        of an epoch no server has (``UNKNOWN_POSITION``): the server answers it as not
        recovered, with the channel's current position, which is "start from now" (the
        protocol has no ``since`` for "none"; the JavaScript client does the same).
        """
        if not self._positions:
            return []
        return [
            ("since", str(self._positions.get(channel, UNKNOWN_POSITION)))
            for channel in self.channels
        ]

    # -- moves ---------------------------------------------------------------------------

    def _start(self, channel: ChannelName, position: Position) -> None:
        self._hold(channel, position)
        self._origins[channel] = position

    def _hold(self, channel: ChannelName, position: Position) -> None:
        self._positions[channel] = position
        highest = self._highest.setdefault(channel, {})
        highest[position.epoch] = max(position.offset, highest.get(position.epoch, 0))

    def _move(self, channel: ChannelName, position: Position) -> list[Event]:
        """Move ``channel`` to where the server says it is; a ``GapNotice`` if it moved."""
        held = self._positions[channel]
        highest = self._highest[channel].get(position.epoch)
        if highest is not None and position.offset < highest:
            position = Position(position.epoch, highest)  # invariant 2
        if position == held:
            return []
        self._hold(channel, position)
        return [GapNotice(channel, held, position)]


def channel_params(channels: Iterable[ChannelName]) -> list[tuple[str, str]]:
    """Return ``channel=`` once per channel, in order (docs/protocol.md §4, §5)."""
    return [("channel", channel) for channel in channels]
