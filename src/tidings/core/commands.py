"""Client commands of the WebSocket protocol (docs/protocol.md §3), decoded into typed frames.

Pure. JSON is decoded once, here at the edge, into frozen structs: a transport never
touches an untyped dict. ``data`` stays the client's JSON text (``msgspec.Raw``) so it
is carried to subscribers without re-serialisation.
"""

from __future__ import annotations

from typing import Annotated, Final

import msgspec

from tidings.core.channel import ChannelName, parse_channel
from tidings.core.publication import Position, parse_position
from tidings.errors import BadRequest, MessageTooLarge

MAX_HISTORY_LIMIT: Final = 1000
MAX_KEY_LENGTH: Final = 255

# No NUL: it marks the client key space (core.dedupe), which no sent key may reach.
IdempotencyKey = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_KEY_LENGTH, pattern="^[^\x00]*$")
]
HistoryLimit = Annotated[int, msgspec.Meta(ge=0, le=MAX_HISTORY_LIMIT)]


class PositionFrame(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``{"epoch", "offset"}`` as a client sends it."""

    epoch: str
    offset: int

    def to_position(self) -> Position:
        """Validate and convert (raises ``BadRequest``)."""
        return parse_position(self.epoch, self.offset)


class _Command(msgspec.Struct, frozen=True, tag_field="op", forbid_unknown_fields=True):
    id: int


class _ChannelCommand(_Command, frozen=True):
    channel: str

    @property
    def channel_name(self) -> ChannelName:
        """The validated channel name (raises ``BadRequest``)."""
        return parse_channel(self.channel)


class Connect(_Command, frozen=True, tag="connect"):
    """Authenticate the connection (optional first command)."""

    token: str | None = None


class Refresh(_Command, frozen=True, tag="refresh"):
    """Replace the connection's token, before it expires, with a new one of the same user."""

    token: str


class Subscribe(_ChannelCommand, frozen=True, tag="subscribe"):
    """Subscribe to a channel, recovering from ``since`` if given."""

    since: PositionFrame | None = None


class Unsubscribe(_ChannelCommand, frozen=True, tag="unsubscribe"):
    """Stop receiving a channel."""


class Publish(_ChannelCommand, frozen=True, tag="publish"):
    """Publish ``data`` in a channel (where the namespace allows clients to)."""

    data: msgspec.Raw
    key: IdempotencyKey | None = None


class History(_ChannelCommand, frozen=True, tag="history"):
    """Read a channel's history after ``since`` (or its latest publications)."""

    since: PositionFrame | None = None
    limit: HistoryLimit | None = None


class Presence(_ChannelCommand, frozen=True, tag="presence"):
    """Ask who is subscribed to a channel."""


class Ping(_Command, frozen=True, tag="ping"):
    """Ask for an empty reply (a client-side liveness check)."""


Command = Connect | Refresh | Subscribe | Unsubscribe | Publish | History | Presence | Ping

_decoder: Final = msgspec.json.Decoder(Command)
OPS: Final = (
    "connect",
    "refresh",
    "subscribe",
    "unsubscribe",
    "publish",
    "history",
    "presence",
    "ping",
)


class _IdOnly(msgspec.Struct):
    id: int


_id_decoder: Final = msgspec.json.Decoder(_IdOnly)
_LINE_BREAKS_TO_SPACES: Final = bytes.maketrans(b"\r\n", b"  ")


def parse_command(frame: str | bytes) -> Command:
    """Decode one client frame.

    Raises:
        BadRequest: the frame is not valid JSON or not a valid command; the message
            names the field at fault.
    """
    try:
        command: Command = _decoder.decode(frame)
    except msgspec.ValidationError as exc:
        hint = f"; op must be one of {', '.join(OPS)}" if "`$.op`" in str(exc) else ""
        raise BadRequest(f"invalid command: {exc}{hint}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"frame is not JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("frame is nested too deeply") from None
    return command


def command_id(frame: str | bytes) -> int | None:
    """Return the ``id`` of a frame that failed to parse, if one can be read, for the reply."""
    try:
        return _id_decoder.decode(frame).id
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return None


def single_line_json(data: bytes) -> bytes:
    """Return ``data`` (valid JSON text) with no raw CR or LF.

    A raw CR or LF in valid JSON can only be whitespace between tokens (strings must
    escape them), and SSE needs every publication on one ``data:`` line (docs/protocol.md
    §4), so each becomes a space: the value is unchanged and nothing is re-parsed.
    """
    if b"\n" in data or b"\r" in data:
        return data.translate(_LINE_BREAKS_TO_SPACES)
    return data


def publication_data(data: bytes, limit: int) -> bytes:
    """Check publication ``data`` (valid JSON text) against its namespace's size limit and
    return it on one line: the one rule every way of publishing applies.

    Raises:
        MessageTooLarge: ``data`` is over ``limit`` bytes.
    """
    if len(data) > limit:
        raise MessageTooLarge("data", len(data), limit)
    return single_line_json(data)
