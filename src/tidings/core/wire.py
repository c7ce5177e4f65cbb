"""JSON encodings of publications and replies, shared by every transport. Pure.

Publication ``data`` is carried as ``msgspec.Raw`` (the publisher's JSON text), so
encoding a publication copies its payload instead of re-serialising it. An
``EncodedPublication`` computes each wire form at most once and every recipient of
that form shares the same object (DESIGN.md, "encode once, send many").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import msgspec

from tidings.core.cursor import encode_cursor
from tidings.core.publication import Position, Publication

_encoder: Final = msgspec.json.Encoder()
encode_json = _encoder.encode


class InfoFrame(msgspec.Struct, frozen=True):
    """``info`` of a publication a client made."""

    client: str
    user: str


class PublicationFrame(msgspec.Struct, frozen=True, omit_defaults=True):
    """A publication as JSON (poll answers, SSE data, history results)."""

    channel: str
    epoch: str
    offset: int
    data: msgspec.Raw
    ts: int
    key: str | None = None
    info: InfoFrame | None = None


class PubPushFrame(msgspec.Struct, frozen=True, omit_defaults=True, tag_field="push", tag="pub"):
    """A publication pushed over WebSocket: ``{"push": "pub", ...}``."""

    channel: str
    epoch: str
    offset: int
    data: msgspec.Raw
    ts: int
    key: str | None = None
    info: InfoFrame | None = None


def publication_frame(publication: Publication) -> PublicationFrame:
    """Return the JSON frame of ``publication``."""
    info = publication.info
    return PublicationFrame(
        publication.channel,
        publication.epoch,
        publication.offset,
        msgspec.Raw(publication.data),
        publication.ts,
        publication.key,
        None if info is None else InfoFrame(info.client, info.user),
    )


def publication_frames(publications: Iterable[Publication]) -> list[PublicationFrame]:
    """Return the JSON frames of ``publications``, in order."""
    return [publication_frame(publication) for publication in publications]


def position_fields(position: Position) -> dict[str, Any]:
    """Return ``{"epoch", "offset"}`` of a position, as replies carry them."""
    return {"epoch": position.epoch, "offset": position.offset}


class EncodedPublication:
    """A publication and its wire forms, each computed on first use and then shared."""

    __slots__ = ("_json", "_json_text", "_sse_single", "_websocket", "position", "publication")

    def __init__(self, publication: Publication) -> None:
        self.publication = publication
        # One Position for every recipient, not one per recipient and delivery.
        self.position = publication.position
        self._websocket: str | None = None
        self._json: bytes | None = None
        self._json_text: str | None = None
        self._sse_single: str | None = None

    @property
    def websocket(self) -> str:
        """The text of the WebSocket ``pub`` push (docs/protocol.md §3)."""
        if self._websocket is None:
            p = self.publication
            info = None if p.info is None else InfoFrame(p.info.client, p.info.user)
            frame = PubPushFrame(
                p.channel, p.epoch, p.offset, msgspec.Raw(p.data), p.ts, p.key, info
            )
            self._websocket = _encoder.encode(frame).decode()
        return self._websocket

    @property
    def json(self) -> bytes:
        """The publication as one line of JSON (SSE ``data:``, poll answers)."""
        if self._json is None:
            self._json = _encoder.encode(publication_frame(self.publication))
        return self._json

    @property
    def json_text(self) -> str:
        """``json`` as text."""
        if self._json_text is None:
            self._json_text = self.json.decode()
        return self._json_text

    def sse_event(self, cursor: str) -> str:
        """The SSE ``pub`` event whose ``id`` is ``cursor`` (docs/protocol.md §4)."""
        return f"id: {cursor}\nevent: pub\ndata: {self.json_text}\n\n"

    @property
    def sse_single(self) -> str:
        """The SSE ``pub`` event for a stream of this publication's channel alone.

        Its cursor holds only this publication's position, so every single-channel
        stream of the channel shares one string.
        """
        if self._sse_single is None:
            p = self.publication
            self._sse_single = self.sse_event(encode_cursor({p.channel: p.position}))
        return self._sse_single
