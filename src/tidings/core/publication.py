"""Publications, positions and the identity of who published. Pure values.

A publication's ``data`` is kept as the JSON text the publisher sent (validated once, at
the edge), so encoding it for any wire format is a copy, never a re-serialisation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from tidings.core.channel import ChannelName
from tidings.core.digits import parse_digits
from tidings.errors import BadRequest

EPOCH_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-]{1,32}")


@dataclass(frozen=True, slots=True)
class Position:
    """The last publication a client has in one channel: an epoch and an offset in it."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch}:{self.offset}"


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """Who published a publication from a client connection (docs/protocol.md §1 ``info``)."""

    client: str
    user: str


@dataclass(frozen=True, slots=True)
class Publication:
    """One publication in one channel, at one offset of one epoch.

    ``data`` is the UTF-8 JSON text of the payload, exactly as it goes on the wire.
    """

    channel: ChannelName
    epoch: str
    offset: int
    data: bytes
    ts: int
    key: str | None = None
    info: ClientInfo | None = None

    @property
    def position(self) -> Position:
        """The position a client holds once it has this publication."""
        return Position(self.epoch, self.offset)


def parse_position(epoch: object, offset: object) -> Position:
    """Validate a position received from a peer.

    Raises:
        BadRequest: the epoch is not 1–32 of ``[A-Za-z0-9_-]`` or the offset is not an
            integer >= 0.
    """
    if not isinstance(epoch, str) or EPOCH_PATTERN.fullmatch(epoch) is None:
        raise BadRequest("epoch must be 1-32 characters of A-Z a-z 0-9 _ -")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise BadRequest("offset must be an integer >= 0")
    return Position(epoch, offset)


def parse_position_text(text: str) -> Position:
    """Parse ``<epoch>:<offset>``, the ``since=`` form of a position in URLs.

    Raises:
        BadRequest: the text is not of that form.
    """
    epoch, separator, offset_text = text.rpartition(":")
    offset = parse_digits(offset_text) if separator else None
    if offset is None:
        raise BadRequest(f"since must be <epoch>:<offset>, got {text[:80]!r}")
    return parse_position(epoch, offset)
