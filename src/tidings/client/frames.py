"""The server's JSON as the client reads it: typed frames, decoded once, at the edge.

Pure. Every answer, reply and push of docs/protocol.md version 1 that the client reads is a
``msgspec.Struct`` here; a publication's ``data`` stays the server's JSON text
(``msgspec.Raw``), so a ``Publication`` carries exactly the bytes that were published.
Unknown fields are ignored (a newer server may add some); a missing or mistyped one
is a ``ProtocolViolation``.
"""

from __future__ import annotations

import math
from typing import TypeVar

import msgspec

from tidings.client.errors import ErrorBody, ProtocolViolation
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Publication
from tidings.core.wire import PublicationFrame

T = TypeVar("T")


class WsFrame(msgspec.Struct, frozen=True):
    """Any WebSocket frame from the server: a reply (``id``) or a push (``push``)."""

    id: int | None = None
    result: msgspec.Raw = msgspec.Raw()  # empty when absent (msgspec has no Raw | None)
    error: ErrorBody | None = None
    push: str | None = None


class ConnectResult(msgspec.Struct, frozen=True):
    """The result of ``connect``: who we are, the ``ping`` interval in seconds, and
    when the token expires (``exp``, Unix seconds), if it does."""

    client: str
    user: str
    ping: float
    version: str
    expires: int | None = None


class RefreshResult(msgspec.Struct, frozen=True):
    """The result of ``refresh``: when the new token expires, if it does."""

    expires: int | None = None


class SubscribeResult(msgspec.Struct, frozen=True):
    """The result of ``subscribe``: the position after ``publications``, and whether the
    ``since`` given was recovered."""

    epoch: str
    offset: int
    recovered: bool
    publications: list[PublicationFrame]


class Disconnect(msgspec.Struct, frozen=True):
    """A ``disconnect`` push (WebSocket) or event (SSE): why the server is closing."""

    code: int
    reason: str = ""
    reconnect: bool = False
    url: str | None = None
    delay: float | None = None  # ms to wait before reconnecting (1.1)

    @property
    def delay_ms(self) -> int | None:
        """The reconnect delay in whole ms; ``None`` if absent or nonsense (negative, not
        finite): a server's odd advice must not stop a client, the backoff decides."""
        delay = self.delay
        if delay is None or not 0 <= delay < math.inf:
            return None
        return math.ceil(delay)


class ChannelStart(msgspec.Struct, frozen=True):
    """One channel of an SSE ``subscribed`` event."""

    epoch: str
    offset: int
    recovered: bool


class Subscribed(msgspec.Struct, frozen=True):
    """The data of an SSE ``subscribed`` event."""

    channels: dict[str, ChannelStart]


class PollAnswer(msgspec.Struct, frozen=True):
    """A ``/poll`` answer (docs/protocol.md §5); ``positions`` is the 1.1 field: where the
    answer leaves each channel (the cursor's positions, which clients do not read)."""

    publications: list[PublicationFrame]
    cursor: str
    recovered: bool
    positions: dict[str, ChannelStart]


class PositionAnswer(msgspec.Struct, frozen=True):
    """``{"epoch", "offset"}``: where a publish landed."""

    epoch: str
    offset: int


class BroadcastResult(msgspec.Struct, frozen=True):
    """One channel of a broadcast answer."""

    channel: str
    epoch: str
    offset: int


class BroadcastAnswer(msgspec.Struct, frozen=True):
    """``POST /api/broadcast``."""

    results: list[BroadcastResult]


class HistoryAnswer(msgspec.Struct, frozen=True):
    """``GET /api/history``; ``recovered`` only when a position was given."""

    epoch: str
    offset: int
    publications: list[PublicationFrame]
    recovered: bool | None = None


class PresenceClient(msgspec.Struct, frozen=True):
    """One client of a presence answer."""

    user: str


class PresenceAnswer(msgspec.Struct, frozen=True):
    """``GET /api/presence``."""

    clients: dict[str, PresenceClient]


class ChannelCount(msgspec.Struct, frozen=True):
    """One channel of ``GET /api/channels``."""

    subscribers: int


class ChannelsAnswer(msgspec.Struct, frozen=True):
    """``GET /api/channels``."""

    channels: dict[str, ChannelCount]


class DisconnectAnswer(msgspec.Struct, frozen=True):
    """``POST /api/disconnect``."""

    disconnected: int


def decode(what: str, text: bytes | str | msgspec.Raw, kind: type[T]) -> T:
    """Decode ``text`` as ``kind``.

    Raises:
        ProtocolViolation: it is not JSON of that shape; the message names ``what``.
    """
    try:
        return msgspec.json.decode(text, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolViolation(f"unreadable {what}: {exc}") from None


def to_publication(frame: PublicationFrame) -> Publication:
    """Return the publication a frame carries."""
    info = frame.info
    return Publication(
        channel=ChannelName(frame.channel),
        epoch=frame.epoch,
        offset=frame.offset,
        data=bytes(frame.data),
        ts=frame.ts,
        key=frame.key,
        info=None if info is None else ClientInfo(info.client, info.user),
    )


def to_publications(frames: list[PublicationFrame]) -> list[Publication]:
    """Return the publications of ``frames``, in order."""
    return [to_publication(frame) for frame in frames]
