"""What every transport of the client provides: one connection's worth of events.

No I/O here. A ``Connector`` opens one connection (or, for polling, one run of polls),
subscribes from the tracker's positions, and yields the events the tracker lets
through until the connection ends, which it reports by raising: a network error, a
``ConnectionClosed`` saying whether to reconnect, a ``RequestError`` from the server,
or ``TransportRefused``. The ``Subscription`` decides what follows (reconnect, move to
another transport, or stop). Connectors keep what they learnt across connections
(the last cursor), never across subscriptions.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Literal, Protocol

from tidings.client.events import Event
from tidings.client.positions import PositionTracker

TransportName = Literal["ws", "sse", "longpoll", "poll"]


@dataclass(slots=True)
class Attempt:
    """How far one connection attempt got; the connector sets these as it goes."""

    connected: bool = False
    """Something of the server's came through (a WebSocket frame, an SSE event, a poll
    answer): this transport works on this network."""
    subscribed: bool = False
    """Every channel was subscribed: the server serves us (reset the backoff)."""


class Connector(Protocol):
    """One transport of the client."""

    @property
    def name(self) -> TransportName:
        """The transport's name, as ``Subscription.transport`` reports it."""
        ...

    def session(
        self, tracker: PositionTracker, attempt: Attempt
    ) -> AsyncGenerator[list[Event], None]:
        """Connect, subscribe every channel from ``tracker.positions``, yield events.

        Yields:
            Batches of events, as ``tracker`` returned them (it is up to date with
            each batch when it is yielded).

        Raises:
            Whatever ended the connection; it never returns while connected.
        """
        ...
