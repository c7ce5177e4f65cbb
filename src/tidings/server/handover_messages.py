"""The messages of a hand-over (``POST /node/handover``, docs/protocol.md §9): their
form on the wire, and how a channel's snapshot is cut into messages. Pure.

A giver sends each moving channel as messages of at most ``MESSAGE_DATA_BYTES`` of
publications and ``MESSAGE_KEY_BYTES`` of idempotency keys, far below the body a node
takes (``MAX_HANDOVER_BODY_BYTES``); ``server.handover`` sends them, gathered with other
channels' into one call (a list, answered by a list: ``server.handover_sending``), and
``server.handover_receiver`` applies them.
"""

from __future__ import annotations

from typing import Final

import msgspec

from tidings.core.channel import ChannelName
from tidings.core.dedupe import RememberedKey
from tidings.core.publication import Position, Publication
from tidings.core.wire import InfoFrame

# A snapshot goes in parts (``MESSAGE_DATA_BYTES``); a body is bounded as any request's.
MAX_HANDOVER_BODY_BYTES: Final = 8 * 1024 * 1024  # the native server's own bound
# The data carried by one message at most (a long history goes in several).
MESSAGE_DATA_BYTES: Final = 2 * 1024 * 1024
# A publication's fields beside its data in a message, at most (offset, ts, key, info).
PUBLICATION_OVERHEAD_BYTES: Final = 512
# The idempotency keys carried by one message at most (a long dedupe window goes in several).
MESSAGE_KEY_BYTES: Final = 2 * 1024 * 1024
# A key's fields beside the key itself in a message (offset, ts, names).
KEY_OVERHEAD_BYTES: Final = 48


class _Publication(msgspec.Struct, frozen=True, omit_defaults=True):
    offset: int
    ts: int
    data: msgspec.Raw
    key: str | None = None
    info: InfoFrame | None = None


class _Key(msgspec.Struct, frozen=True):
    key: str  # as remembered (``core.dedupe.dedupe_key``): a client's in its user's space
    offset: int
    ts: int


class HandoverMessage(msgspec.Struct, frozen=True, omit_defaults=True):
    """``POST /node/handover``: a giver's snapshot or next publications of one channel,
    and idempotency keys of its epoch (offsets at or below ``top``) that no publication
    of it carries."""

    giver: str
    channel: str
    epoch: str
    top: int
    snapshot: bool
    publications: list[_Publication]
    sealed: bool = False
    keys: list[_Key] = msgspec.field(default_factory=list)


class HandoverError(msgspec.Struct, frozen=True):
    """Why a receiver refused one message of a batch: a docs/protocol.md §7 code
    (``stale_ring``, ``bad_request``, ...) and a message."""

    code: str
    message: str


class HandoverAnswer(msgspec.Struct, frozen=True, omit_defaults=True):
    """The receiver's answer to one message: the position it holds, or ``resync``; in
    the answer to a batch (a list, in the batch's order), or that message's ``error``."""

    epoch: str = ""
    offset: int = 0
    resync: bool = False
    error: HandoverError | None = None


def _first_part(publications: tuple[Publication, ...], max_bytes: int) -> tuple[Publication, ...]:
    """The first publications whose encoding adds up to about ``max_bytes`` at most
    (one at least)."""
    size = 0
    for count, publication in enumerate(publications):
        size += len(publication.data) + PUBLICATION_OVERHEAD_BYTES
        if size > max_bytes and count > 0:
            return publications[:count]
    return publications


def _first_keys(keys: tuple[RememberedKey, ...], max_bytes: int) -> tuple[RememberedKey, ...]:
    """The first ``keys`` whose encoding adds up to about ``max_bytes`` at most (one at
    least, if any)."""
    size = 0
    for count, remembered in enumerate(keys):
        size += len(msgspec.json.encode(remembered.key)) + KEY_OVERHEAD_BYTES
        if size > max_bytes and count > 0:
            return keys[:count]
    return keys


def snapshot_keys(
    keys: tuple[RememberedKey, ...],
    retained: tuple[Publication, ...],
    head: Position,
    known: Position | None = None,
) -> tuple[RememberedKey, ...]:
    """The keys a snapshot carries beside its publications: those of offsets before the
    first retained one (whose publications were evicted, or never retained), up to the
    head read (a key above it comes with its publication, or with the next snapshot).

    ``known`` is where the receiver already holds every key up to (acknowledged earlier
    in this hand-over); in the head's epoch, the keys at or below it are not sent again
    (the receiver keeps them across a restart in their epoch: ``Adoption.keeps_keys``).
    So a channel re-snapshotted at each publication (its history evicts them before the
    pump reads them) sends its window once, then only the keys new since."""
    below = retained[0].offset if retained else head.offset + 1
    above = known.offset if known is not None and known.epoch == head.epoch else 0
    return tuple(k for k in keys if above < k.offset < below)


def _position_of(head: Position, publication: Publication) -> Position:
    return Position(head.epoch, publication.offset)


def _message(
    giver: str,
    channel: ChannelName,
    head: Position,
    publications: tuple[Publication, ...],
    keys: tuple[RememberedKey, ...],
    *,
    snapshot: bool,
    sealed: bool,
) -> bytes:
    return msgspec.json.encode(
        HandoverMessage(
            giver,
            channel,
            head.epoch,
            head.offset,
            snapshot,
            [
                _Publication(
                    p.offset,
                    p.ts,
                    msgspec.Raw(p.data),
                    p.key,
                    None if p.info is None else InfoFrame(p.info.client, p.info.user),
                )
                for p in publications
            ],
            sealed,
            [_Key(k.key, k.offset, k.ts) for k in keys],
        )
    )


def next_message(
    giver: str,
    at: tuple[ChannelName, Position],
    publications: tuple[Publication, ...],
    keys: tuple[RememberedKey, ...],
    *,
    snapshot: bool,
    sealed: bool,
) -> tuple[bytes, int]:
    """The next message of a channel (at head ``at``) whose ``publications`` and ``keys``
    are still to send; and how many of the keys it carries.

    A long history goes in parts, a long dedupe window too: each message stays far
    below what a node takes in one request body. A part ends at its last publication (a
    snapshot of the channel as it was then), and only the last part of a sealed
    channel, with the last of its keys, says sealed."""
    channel, head = at
    part = _first_part(publications, MESSAGE_DATA_BYTES)
    top = head if len(part) == len(publications) else _position_of(head, part[-1])
    sent = _first_keys(keys, MESSAGE_KEY_BYTES)
    last = top == head and len(sent) == len(keys)
    raw = _message(giver, channel, top, part, sent, snapshot=snapshot, sealed=sealed and last)
    return raw, len(sent)
