"""The client's ``sse`` transport: one Server-Sent Events stream of ``/sse`` (docs/protocol.md §4).

HTTP I/O over httpx streaming; ``EventStreamDecoder`` (pure) turns lines into events
as the HTML standard's event-stream interpretation does (comments skipped, ``data``
lines joined, a blank line dispatches).

Resuming: the first stream gives ``since=`` per channel (how a client coming from
another transport hands over its positions); a reconnect gives ``Last-Event-ID``, the
cursor of the last event received, as a browser would, when that cursor still names
the tracker's positions (otherwise ``since=`` again). A stream that sends no byte,
not even the ``: ping`` comment the server sends after 15 s of silence, for twice that
long is dead: httpx raises ``ReadTimeout`` and the subscription reconnects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Final, Literal

import httpx

from tidings.client.connector import Attempt
from tidings.client.events import Event
from tidings.client.frames import Disconnect, Subscribed, decode, to_publication
from tidings.client.http import check_answer, node_base
from tidings.client.positions import PositionTracker, channel_params
from tidings.client.tokens import Tokens
from tidings.core.channel import ChannelName
from tidings.core.publication import Position
from tidings.core.wire import PublicationFrame
from tidings.errors import ConnectionClosed

logger = logging.getLogger(__name__)

SERVER_HEARTBEAT_S: Final = 15.0  # docs/protocol.md §4: ": ping" after 15 s of silence
READ_TIMEOUT_S: Final = 2 * SERVER_HEARTBEAT_S
CONNECT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched event: its type, its data (lines joined by LF) and its ``id``."""

    type: str
    data: str
    id: str | None


class EventStreamDecoder:
    """Lines of a ``text/event-stream`` in, events out. Pure.

    Feed each line without its terminator (httpx's ``aiter_lines`` splits at CRLF, LF
    and CR, as the standard does); ``receive_line`` returns an event when a blank line
    ends one that has data.
    """

    __slots__ = ("_data", "_id", "_type")

    def __init__(self) -> None:
        self._type = ""
        self._data: list[str] = []
        self._id: str | None = None

    def receive_line(self, line: str) -> ServerSentEvent | None:
        """Take one line; return the event it completes, if any."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the heartbeat
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None  # retry: the client's backoff decides; other fields are ignored

    def _dispatch(self) -> ServerSentEvent | None:
        event_type, self._type = self._type, ""
        data, self._data = self._data, []
        event_id, self._id = self._id, None
        if not data:
            return None
        return ServerSentEvent(event_type or "message", "\n".join(data), event_id)


class SseConnector:
    """Streams of one server's ``/sse``."""

    __slots__ = ("_http", "_last_event_id", "_read_timeout_s", "_tokens")

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        read_timeout_s: float = READ_TIMEOUT_S,
        tokens: Tokens | None = None,
    ) -> None:
        """Stream through ``http`` (its ``base_url`` is the server), with a token of
        ``tokens`` fetched for each stream."""
        self._http = http
        self._read_timeout_s = read_timeout_s
        self._last_event_id: str | None = None
        self._tokens = tokens or Tokens(None)

    @property
    def name(self) -> Literal["sse"]:
        """``"sse"``."""
        return "sse"

    async def session(
        self, tracker: PositionTracker, attempt: Attempt
    ) -> AsyncGenerator[list[Event], None]:
        """Open a stream and yield its events until it ends (see ``Connector``).

        Raises:
            TransportRefused: something other than a tidings stream answered.
            Redirected: a ``307``: the stream is served by another node.
            RequestError: the server refused the stream (its error code).
            ConnectionClosed: the server sent ``disconnect``; ``reconnect`` says whether
                to come back.
            ConnectionResetError: the stream ended without ``disconnect``.
            httpx.TransportError: the network failed, or the stream went silent.
        """
        params = channel_params(tracker.channels)
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        token = await self._tokens.fresh()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        cursor = tracker.resume_cursor(self._last_event_id)
        if cursor is not None:
            headers["Last-Event-ID"] = cursor
        else:
            params += tracker.since_params()
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=self._read_timeout_s)
        async with self._http.stream(
            "GET", "/sse", params=tuple(params), headers=headers, timeout=timeout
        ) as response:
            await check_answer(response, "sse", "text/event-stream")
            decoder = EventStreamDecoder()
            async for line in response.aiter_lines():
                event = decoder.receive_line(line)
                if event is None:
                    continue
                # An event came through: the network streams (a buffering proxy sends
                # the headers and then holds every event).
                attempt.connected = True
                events = self._receive(event, tracker, attempt)
                if event.id is not None:
                    self._last_event_id = event.id
                if events:
                    yield events
        raise ConnectionResetError("the server ended the SSE stream without a disconnect event")

    def _receive(
        self, event: ServerSentEvent, tracker: PositionTracker, attempt: Attempt
    ) -> list[Event]:
        if event.type == "pub":
            publication = to_publication(decode("pub event", event.data, PublicationFrame))
            return tracker.receive_publication(publication)
        if event.type == "subscribed":
            subscribed = decode("subscribed event", event.data, Subscribed)
            events: list[Event] = []
            for name, start in subscribed.channels.items():
                channel = ChannelName(name)
                if channel in tracker.channels:
                    position = Position(start.epoch, start.offset)
                    events += tracker.receive_subscribed(
                        channel, position, recovered=start.recovered
                    )
            attempt.subscribed = True
            return events
        if event.type == "disconnect":
            goodbye = decode("disconnect event", event.data, Disconnect)
            logger.info(
                "server ends the stream (%d %s, reconnect: %s)",
                goodbye.code,
                goodbye.reason,
                goodbye.reconnect,
            )
            raise ConnectionClosed(
                goodbye.code,
                goodbye.reason,
                reconnect=goodbye.reconnect,
                delay_ms=goodbye.delay_ms,
                url=None if goodbye.url is None else node_base(goodbye.url),
            )
        return []
