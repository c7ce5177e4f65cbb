"""Where a stream or poll starts: the channels asked for and the positions to resume from.

Pure. SSE and polling accept positions three ways (docs/protocol.md §4, §5): a cursor (the
browser's ``Last-Event-ID`` or ``?cursor=``), or ``since=<epoch>:<offset>`` given once
per ``channel=`` in the same order (how a client coming from another transport resumes).
``Last-Event-ID`` wins over the URL's cursor: the browser keeps it current, while the
URL's cursor is the one the stream started with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Final

from tidings.core.channel import ChannelName, parse_channel
from tidings.core.cursor import decode_cursor, encode_cursor
from tidings.core.publication import Position, parse_position_text
from tidings.errors import BadRequest

MAX_STREAM_CHANNELS: Final = 64
# The largest position a cursor may ever have to hold: the longest epoch and an offset
# no channel reaches (2**53, the largest integer every JSON client reads exactly).
_LARGEST_POSITION: Final = Position("e" * 32, 2**53)


def parse_channel_list(
    values: Sequence[str], limit: int = MAX_STREAM_CHANNELS
) -> list[ChannelName]:
    """Validate the ``channel=`` parameters of a request.

    Raises:
        BadRequest: none given, too many, an invalid name, or one listed twice.
    """
    if not values:
        raise BadRequest("give at least one channel=<name>")
    if len(values) > limit:
        raise BadRequest(f"{len(values)} channels given; at most {limit} per request")
    channels = [parse_channel(value) for value in values]
    if len(set(channels)) != len(channels):
        duplicate = next(c for c in channels if channels.count(c) > 1)
        raise BadRequest(f"channel {duplicate} is listed twice")
    _check_capacity(tuple(channels))
    return channels


def check_channel_count(count: int, limit: int) -> None:
    """Refuse a stream or poll of more channels than one connection may hold.

    Args:
        count: the channels the request names.
        limit: the ``max_channels_per_connection`` setting (a WebSocket's bound too).

    Raises:
        BadRequest: ``count`` is over ``limit``; the message names the setting.
    """
    if count > limit:
        raise BadRequest(
            f"{count} channels given; max_channels_per_connection allows {limit} per request"
        )


def check_cursor_capacity(channels: Sequence[ChannelName]) -> None:
    """Refuse, up front, channels whose cursor could one day outgrow its 4 KiB bound.

    A stream's cursor grows with its channels' offsets; checked only when an event is
    written, an overflow would end a stream mid-way. Checking the largest possible
    positions now turns it into a ``bad_request`` before anything is sent.

    Raises:
        BadRequest: the channels' names are too long, together, for one cursor.
    """
    _check_capacity(tuple(channels))


# A pure check repeated by every poll of the same channels: recent answers are kept.
@functools.lru_cache(maxsize=1024)
def _check_capacity(channels: tuple[ChannelName, ...]) -> None:
    encode_cursor(dict.fromkeys(channels, _LARGEST_POSITION))


def resume_positions(
    channels: Sequence[ChannelName],
    *,
    last_event_id: str | None = None,
    cursor: str | None = None,
    since: Sequence[str] = (),
) -> dict[ChannelName, Position]:
    """Return the positions to resume ``channels`` from (empty: start from now).

    A cursor's positions of channels not asked for are ignored; channels the cursor
    does not cover start from now.

    Raises:
        BadRequest: a corrupted cursor, a malformed ``since``, a ``since`` count that
            does not match the channels, or both a URL cursor and ``since``.
    """
    if cursor is not None and since:
        raise BadRequest("give cursor= or since=, not both")
    token = last_event_id or cursor
    if token:
        decoded = decode_cursor(token)
        return {channel: decoded[channel] for channel in channels if channel in decoded}
    if not since:
        return {}
    if len(since) != len(channels):
        raise BadRequest(
            f"{len(since)} since= given for {len(channels)} channel=; give one per channel, "
            "in the same order"
        )
    return {
        channel: parse_position_text(text) for channel, text in zip(channels, since, strict=True)
    }
