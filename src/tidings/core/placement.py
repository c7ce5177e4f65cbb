"""Where a channel is served: on this node, or on its owner elsewhere (docs/protocol.md §9).

Pure. ``Placement`` is the plug point the consistent-hashing mode implements (the ring
knows each routing key's owner); every other mode serves every channel on every node,
which ``LOCAL_PLACEMENT`` says. Admission asks it for each channel a client wants, and a
``Moved`` answer becomes the ``moved`` error with the owner's URL on a WebSocket and a
``307`` to the same request on the owner over HTTP (``owner_location``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Protocol

from tidings.core.channel import ChannelName


@dataclass(frozen=True, slots=True)
class Here:
    """The channel is served by this node."""


@dataclass(frozen=True, slots=True)
class Moved:
    """The channel is owned by another node, reachable at ``url`` (its base URL, such as
    ``https://node-b.example:8000``: no path)."""

    url: str


HERE: Final = Here()


class Placement(Protocol):
    """Says which node serves a channel. Answers from memory: admission asks it for
    every channel of every request, so it must not wait for anything."""

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE`` if this node serves ``channel``, else where its owner is."""
        ...


class LocalPlacement:
    """Every channel is served here: every mode but consistent hashing."""

    __slots__ = ()

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE``."""
        return HERE


LOCAL_PLACEMENT: Final = LocalPlacement()


def owner_location(base_url: str, target: str) -> str:
    """The same request on the owner: its base URL and this request's path and query
    (``target``, as in ``/sse?channel=doc:9``)."""
    return base_url.rstrip("/") + target


def owner_websocket_url(base_url: str) -> str:
    """The owner's ``/ws`` URL: ``http`` becomes ``ws`` and ``https`` becomes ``wss``."""
    base = base_url.rstrip("/")
    scheme, sep, rest = base.partition("://")
    ws_scheme = {"http": "ws", "https": "wss"}.get(scheme.lower(), scheme)
    return f"{ws_scheme}{sep}{rest}/ws" if sep else f"{base}/ws"
