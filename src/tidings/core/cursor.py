"""Cursors: opaque, URL-safe tokens holding the positions of a subscription's channels.

Pure. docs/protocol.md §1: a cursor is ``[A-Za-z0-9_-]+``, at most 4 KiB, and clients never
parse it. Layout before base64url (no padding)::

    version (1 byte) | JSON [[channel, epoch, offset], ...] | blake2b-64 of the above

The checksum is what makes a corrupted cursor (a truncated URL, a flipped character) a
``bad_request`` instead of a silently wrong position: a misread cursor would make the
server skip or repeat publications, which docs/protocol.md §2 forbids.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Final

from tidings.core.bounded_cache import BoundedCache
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.publication import Position, parse_position
from tidings.errors import BadRequest

MAX_CURSOR_LENGTH: Final = 4096
_VERSION: Final = b"\x01"
_CHECKSUM_BYTES: Final = 8
_CURSOR_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-]+")

Positions = Mapping[ChannelName, Position]
_DECODED_CACHE_BYTES: Final = 2 * 1024 * 1024
_DECODED_BYTES_PER_POSITION: Final = 256


_DECODED: Final[BoundedCache[str, tuple[tuple[ChannelName, Position], ...]]] = BoundedCache(
    _DECODED_CACHE_BYTES, 64 * 1024
)


def _checksum(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=_CHECKSUM_BYTES).digest()


def encode_cursor(positions: Positions) -> str:
    """Encode the positions of a subscription's channels as a cursor.

    Raises:
        BadRequest: the cursor would be longer than 4 KiB (too many or too long
            channel names for one subscription).
    """
    entries = [
        [channel, position.epoch, position.offset] for channel, position in positions.items()
    ]
    body = _VERSION + json.dumps(entries, separators=(",", ":")).encode()
    token = _b64(body + _checksum(body))
    if len(token) > MAX_CURSOR_LENGTH:
        raise BadRequest(
            f"the positions of {len(positions)} channels make a cursor of {len(token):,} "
            f"characters; at most {MAX_CURSOR_LENGTH:,} are allowed: subscribe fewer channels"
        )
    return token


def decode_cursor(token: str) -> dict[ChannelName, Position]:
    """Decode a cursor received from a client.

    Raises:
        BadRequest: the token is not a cursor this server made, or was altered.
    """
    # Pollers hand the same cursor back many times; a decoding is a pure function of
    # the token, so recent ones are kept (only successes), within a byte budget: anyone
    # can make valid cursors (the checksum is no secret), as many distinct ones as they
    # like.
    decoded = _DECODED.get(token)
    if decoded is None:
        decoded = _decode(token)
        _DECODED.put(token, decoded, len(token) + _DECODED_BYTES_PER_POSITION * len(decoded))
    return dict(decoded)


def _decode(token: str) -> tuple[tuple[ChannelName, Position], ...]:
    if len(token) > MAX_CURSOR_LENGTH or _CURSOR_PATTERN.fullmatch(token) is None:
        raise BadRequest(
            f"cursor must be 1-{MAX_CURSOR_LENGTH} characters of A-Z a-z 0-9 _ -; "
            "pass back a cursor exactly as the server gave it"
        )
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError):
        raise _corrupted() from None
    if _b64(raw) != token:
        # The last character has unused bits; only the canonical spelling is ours.
        raise _corrupted()
    body, checksum = raw[:-_CHECKSUM_BYTES], raw[-_CHECKSUM_BYTES:]
    if len(raw) <= _CHECKSUM_BYTES or _checksum(body) != checksum or body[:1] != _VERSION:
        raise _corrupted()
    try:
        entries = json.loads(body[1:])
    except (ValueError, RecursionError):
        raise _corrupted() from None
    if not isinstance(entries, list):
        raise _corrupted()
    positions: dict[ChannelName, Position] = {}
    for entry in entries:
        if not isinstance(entry, list) or len(entry) != 3:
            raise _corrupted()
        channel, epoch, offset = entry
        positions[parse_channel(channel)] = parse_position(epoch, offset)
    return tuple(positions.items())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _corrupted() -> BadRequest:
    return BadRequest("cursor is corrupted; pass back a cursor exactly as the server gave it")
