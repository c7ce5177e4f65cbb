"""A resuming WebSocket subscription: the Python client's ``ws`` transport.

I/O over ``websockets``. Keeps the position of every channel; on a dropped or
reconnectable close it waits (backoff with full jitter), reconnects, and subscribes
again with ``since`` so the server replays what was missed. It never yields an offset
twice, and yields a ``GapNotice`` when the server says ``recovered: false``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection, connect

from tidings.client.backoff import Backoff
from tidings.client.events import Event, GapNotice
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.errors import ConnectionClosed
from tidings.transports.close_codes import is_reconnectable

logger = logging.getLogger(__name__)

# Failures after which a reconnect may succeed: network errors, refused handshakes.
_CONNECTION_ERRORS = (
    TimeoutError,
    OSError,
    websockets.ConnectionClosedError,
    websockets.InvalidHandshake,
)


def _publication(frame: dict[str, Any]) -> Publication:
    info = frame.get("info")
    return Publication(
        channel=ChannelName(frame["channel"]),
        epoch=frame["epoch"],
        offset=frame["offset"],
        data=json.dumps(frame["data"], separators=(",", ":")).encode(),
        ts=frame["ts"],
        key=frame.get("key"),
        info=None if info is None else ClientInfo(info["client"], info["user"]),
    )


class WebSocketSubscription:
    """Subscribe to channels over ``/ws`` and iterate their publications, resuming."""

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        *,
        token: str | None = None,
        since: dict[str, Position] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.url = url
        self.channels = [parse_channel(channel) for channel in channels]
        self.token = token
        self.positions: dict[ChannelName, Position] = {
            parse_channel(channel): position for channel, position in (since or {}).items()
        }
        self._backoff = backoff or Backoff()
        self._ids = itertools.count(1)
        self._closed = False
        self._connection: ClientConnection | None = None

    async def close(self) -> None:
        """Stop: the iteration ends."""
        self._closed = True
        if self._connection is not None:
            await self._connection.close()

    def _accept(self, publication: Publication) -> bool:
        """Record the publication's position; whether it is new (not a duplicate)."""
        held = self.positions.get(publication.channel)
        if (
            held is not None
            and held.epoch == publication.epoch
            and publication.offset <= held.offset
        ):
            return False
        self.positions[publication.channel] = publication.position
        return True

    async def __aiter__(self) -> AsyncIterator[Event]:
        while not self._closed:
            try:
                async for event in self._session():
                    yield event
            except _CONNECTION_ERRORS as exc:
                logger.info("connection to %s lost: %s", self.url, exc)
            except ConnectionClosed as closed:
                if not closed.reconnect:
                    raise
                logger.info("server closed with %d (%s); reconnecting", closed.code, closed.reason)
            if self._closed:
                return
            await asyncio.sleep(self._backoff.next_delay_s())

    async def _session(self) -> AsyncIterator[Event]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        async with connect(self.url, additional_headers=headers, max_size=None) as connection:
            self._connection = connection
            pending: dict[int, ChannelName] = {}
            for channel in self.channels:
                command: dict[str, Any] = {
                    "op": "subscribe",
                    "id": next(self._ids),
                    "channel": channel,
                }
                position = self.positions.get(channel)
                if position is not None:
                    command["since"] = {"epoch": position.epoch, "offset": position.offset}
                pending[command["id"]] = channel
                await connection.send(json.dumps(command))
            try:
                async for raw in connection:
                    frame = json.loads(raw)
                    for event in self._receive(frame, pending):
                        yield event
            except websockets.ConnectionClosed:
                pass  # the close code below says whether to come back
            if self._closed:
                return
            code = connection.close_code or 1006
            reason = connection.close_reason or ""
            raise ConnectionClosed(code, reason, reconnect=is_reconnectable(code) or code == 1006)

    def _receive(self, frame: dict[str, Any], pending: dict[int, ChannelName]) -> list[Event]:
        events: list[Event] = []
        if "id" in frame:
            channel = pending.pop(frame["id"], None)
            if channel is None:
                return events
            if "error" in frame:
                error = frame["error"]
                raise ConnectionClosed(4003, f"subscribe {channel}: {error['message']}")
            result = frame["result"]
            since = self.positions.get(channel)
            if since is not None and not result["recovered"]:
                head = Position(result["epoch"], result["offset"])
                events.append(GapNotice(channel, since, head))
                self.positions[channel] = head
            elif since is None:
                self.positions[channel] = Position(result["epoch"], result["offset"])
            for publication_frame in result["publications"]:
                publication = _publication(publication_frame)
                if self._accept(publication):
                    events.append(publication)
            if not pending:
                self._backoff.reset()
        elif frame.get("push") == "pub":
            publication = _publication(frame)
            if self._accept(publication):
                events.append(publication)
        return events
