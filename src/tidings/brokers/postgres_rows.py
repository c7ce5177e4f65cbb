"""How the PostgreSQL broker carries publications: as rows of its ``publications`` table,
and as NOTIFY notices. Pure: no I/O.

A notice is ``<epoch> <offset> <body>``; the epoch and offset are written by the
publish function (only it knows them), the body by the publishing node: ``F`` and the
publication as a JSON array (channel, ts, key, client, user, data: its JSON text as
is), or, when that would not fit in NOTIFY's 8000-byte payload, ``A`` and the channel
alone: the receiver reads the publication back by its position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from tidings.core.channel import ChannelName
from tidings.core.history import HistoryOptions
from tidings.core.publication import ClientInfo, Position, Publication

# NOTIFY payloads must stay under 8000 bytes; the epoch and offset go in front.
NOTICE_LIMIT: Final = 7900
# The columns ``publication_of`` reads, in its order, of ``publications`` aliased ``p``.
COLUMNS: Final = 'p."offset", p.ts_ms, p.data, p.key, p.client, p."user"'

Row = tuple[object, ...]


class _Body(msgspec.Struct, array_like=True, frozen=True):
    channel: str
    ts: int
    key: str | None
    client: str | None
    user: str | None
    data: msgspec.Raw


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Body).decode
_FULL: Final = "F"
_ANNOUNCED: Final = "A"


@dataclass(frozen=True, slots=True)
class Notice:
    """A publication's notice, read: where it is and, unless only announced, itself."""

    channel: ChannelName
    position: Position
    publication: Publication | None


def notice_body(
    channel: ChannelName, ts: int, key: str | None, info: ClientInfo | None, data: bytes
) -> str:
    """Return the body of a publication's notice: itself if it fits, else its channel."""
    client, user = (None, None) if info is None else (info.client, info.user)
    body = _FULL + _encode(_Body(channel, ts, key, client, user, msgspec.Raw(data))).decode()
    return body if len(body.encode()) <= NOTICE_LIMIT else _ANNOUNCED + channel


def read_notice(payload: str) -> Notice | None:
    """Read a notice; ``None`` if it cannot be read (garbage, or a newer node's form)."""
    epoch, _, rest = payload.partition(" ")
    offset, _, body = rest.partition(" ")
    try:
        position = Position(epoch, int(offset))
        if body.startswith(_ANNOUNCED):
            return Notice(ChannelName(body[1:]), position, None)
        if not body.startswith(_FULL):
            return None
        read = _decode(body[1:])
    except (ValueError, msgspec.ValidationError, msgspec.DecodeError):
        return None
    channel = ChannelName(read.channel)
    info = None if read.client is None else ClientInfo(read.client, read.user or "")
    publication = Publication(
        channel, epoch, position.offset, bytes(read.data), read.ts, read.key, info
    )
    return Notice(channel, position, publication)


def publication_of(channel: ChannelName, epoch: str, row: Row) -> Publication:
    """Return the publication of a row of ``COLUMNS``."""
    offset, ts_ms, data, key, client, user = row
    info = None if client is None else ClientInfo(str(client), str(user or ""))
    return Publication(
        channel,
        epoch,
        int(str(offset)),
        bytes(data) if isinstance(data, bytes | memoryview) else str(data).encode(),
        int(str(ts_ms)),
        None if key is None else str(key),
        info,
    )


def retained(
    publications: list[Publication], head_offset: int, options: HistoryOptions, now_ms: int
) -> list[Publication]:
    """Keep what the namespace retains: the last ``size`` offsets, evicting from the
    front those older than the ttl (as ``ChannelHistory`` does; rows may outlive both
    until the trim)."""
    first_kept = head_offset - options.size + 1
    oldest_ms = now_ms - options.ttl_ms
    start = 0
    while start < len(publications) and (
        publications[start].offset < first_kept or publications[start].ts < oldest_ms
    ):
        start += 1
    return publications[start:]
