"""The client's ``ws`` transport: one WebSocket connection to ``/ws`` (docs/protocol.md §3).

I/O over ``websockets``. A connection sends ``connect`` (to learn the server's ``ping``
interval), then one ``subscribe`` per channel with ``since`` from the tracker, and
reads frames until the connection ends. Commands are pipelined: the server answers in
order, and pushes a channel's publications only after its subscribe reply, so feeding
frames to the tracker in arrival order keeps every channel in order.

A link that stays silent for twice the announced ping interval is dead (the server
sends ``{"push": "ping"}`` after each ``ping`` seconds of silence): it raises
``TimeoutError`` and the subscription reconnects.

Token renewal (tokens.py): when ``connect`` (or ``refresh``) answers ``expires`` and
the application gave a token callable, a timer task of the connection fetches a new
token shortly before then and sends ``refresh``. A refused refresh is logged and left
alone: the server then closes at expiry with 4001 and ``reconnect: true``, and the
subscription reconnects with a fresh token.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator
from typing import Final, Literal

import websockets
from websockets.asyncio.client import ClientConnection, connect

from tidings.client.connector import Attempt
from tidings.client.errors import (
    ProtocolViolation,
    Redirected,
    TransportRefused,
    error_for,
    is_terminal_close,
)
from tidings.client.events import Event
from tidings.client.frames import (
    ConnectResult,
    Disconnect,
    RefreshResult,
    SubscribeResult,
    WsFrame,
    decode,
    to_publication,
    to_publications,
)
from tidings.client.http import node_base
from tidings.client.positions import PositionTracker
from tidings.client.tokens import Tokens, renew_in_s
from tidings.core.channel import ChannelName
from tidings.core.publication import Position
from tidings.core.wire import PublicationFrame, encode_json
from tidings.errors import ConnectionClosed

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
# A silent link is dead after this many announced ping intervals (docs/protocol.md §3 ping).
SILENT_PINGS: Final = 2
CLOSE_ABNORMAL: Final = 1006


class WebSocketConnector:
    """Connections to one server's ``/ws``."""

    __slots__ = ("_tokens", "url")

    def __init__(self, url: str, token: str | Tokens | None = None) -> None:
        """Connect to ``url`` (``ws://host:port/ws``), with ``token`` (or one of ``Tokens``,
        fetched for each connection) as a bearer token."""
        self.url = url
        self._tokens = token if isinstance(token, Tokens) else Tokens(token)

    @property
    def name(self) -> Literal["ws"]:
        """``"ws"``."""
        return "ws"

    async def session(
        self, tracker: PositionTracker, attempt: Attempt
    ) -> AsyncGenerator[list[Event], None]:
        """Connect, subscribe, and yield events until the connection ends (see ``Connector``).

        Raises:
            TransportRefused: the handshake was answered with an HTTP status.
            ConnectionClosed: the server closed; ``reconnect`` says whether to come back.
            RequestError: the server refused ``connect`` or a ``subscribe``.
            Redirected: ``subscribe`` was answered ``moved`` for some channels.
            TimeoutError: the link went silent.
        """
        token = await self._tokens.fresh()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            connection = await connect(
                self.url,
                additional_headers=headers,
                max_size=None,
                open_timeout=OPEN_TIMEOUT_S,
                close_timeout=CLOSE_TIMEOUT_S,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            raise TransportRefused("ws", status, "the WebSocket upgrade was refused") from exc
        reader = _Reader(connection, tracker, attempt, self._tokens)
        try:
            # A server that refuses the handshake's token closes at once (4001): the
            # close, read below, says so. Failing on the send instead would look like a
            # network that cuts WebSocket, and send ``auto`` to the next transport.
            with contextlib.suppress(websockets.ConnectionClosed):
                await reader.send_commands()
            async with contextlib.aclosing(reader.read()) as batches:
                async for events in batches:
                    yield events
        finally:
            await reader.stop_renewal()
            await connection.close()


class _Reader:
    """The commands and frames of one connection."""

    def __init__(
        self,
        connection: ClientConnection,
        tracker: PositionTracker,
        attempt: Attempt,
        tokens: Tokens,
    ) -> None:
        self._connection = connection
        self._tokens = tokens
        self._renewal: asyncio.Task[None] | None = None
        self._refresh_ids: set[int] = set()
        self._tracker = tracker
        self._attempt = attempt
        self._ids = itertools.count(1)
        self._connect_id = 0
        self._pending: dict[int, ChannelName] = {}
        self._silence_s = OPEN_TIMEOUT_S  # until the server says its ping interval
        self._goodbye: Disconnect | None = None
        # Channels a ``subscribe`` was answered ``moved`` for: the owner's base URL.
        self._moved: dict[ChannelName, str] = {}

    async def send_commands(self) -> None:
        """Send ``connect`` and one ``subscribe`` per channel, without waiting for replies."""
        self._connect_id = next(self._ids)
        await self._send({"op": "connect", "id": self._connect_id})
        positions = self._tracker.positions
        for channel in self._tracker.channels:
            command_id = next(self._ids)
            command: dict[str, object] = {"op": "subscribe", "id": command_id, "channel": channel}
            position = positions.get(channel)
            if position is not None:
                command["since"] = {"epoch": position.epoch, "offset": position.offset}
            self._pending[command_id] = channel
            await self._send(command)

    async def _send(self, command: dict[str, object]) -> None:
        await self._connection.send(encode_json(command).decode())

    async def read(self) -> AsyncGenerator[list[Event], None]:
        """Yield the events of each frame until the connection ends, then raise why."""
        connection = self._connection
        while True:
            try:
                async with asyncio.timeout(self._silence_s):
                    raw = await connection.recv()
            except websockets.ConnectionClosed:
                break
            events = self._receive(raw)
            if events:
                yield events
        code = connection.close_code
        reason = connection.close_reason or ""
        goodbye = self._goodbye
        if (code is None or code == CLOSE_ABNORMAL) and goodbye is not None:
            code, reason = goodbye.code, goodbye.reason  # the close frame was lost
        code = CLOSE_ABNORMAL if code is None else code
        # The server's own advice wins over the code's range: a 4001 "token expired"
        # says reconnect (with a fresh token).
        advised = goodbye is not None and goodbye.code == code and goodbye.reconnect
        delay_ms = goodbye.delay_ms if goodbye is not None else None
        url = goodbye.url if goodbye is not None and goodbye.code == code else None
        raise ConnectionClosed(
            code,
            reason,
            reconnect=advised or not is_terminal_close(code),
            delay_ms=delay_ms,
            url=None if url is None else node_base(url),
        )

    def _receive(self, raw: str | bytes) -> list[Event]:
        frame = decode("WebSocket frame", raw, WsFrame)
        # A frame came through: the network carries WebSocket (some proxies accept the
        # upgrade, then pass nothing).
        self._attempt.connected = True
        if frame.id is not None:
            return self._receive_reply(frame)
        if frame.push == "pub":
            publication = to_publication(decode("pub push", raw, PublicationFrame))
            return self._tracker.receive_publication(publication)
        if frame.push == "disconnect":
            self._goodbye = decode("disconnect push", raw, Disconnect)
            logger.info(
                "server disconnects (%d %s, reconnect: %s)",
                self._goodbye.code,
                self._goodbye.reason,
                self._goodbye.reconnect,
            )
        return []  # ping, presence: nothing for the application

    def _receive_reply(self, frame: WsFrame) -> list[Event]:
        if frame.id in self._refresh_ids:
            self._refresh_ids.discard(frame.id or 0)
            if frame.error is not None:
                # The connection stays on its token until the server closes at its
                # expiry (4001, reconnect): the reconnect fetches a fresh one.
                logger.warning("token refresh refused: %s", frame.error.message)
            elif frame.result is not None:
                refreshed = decode("refresh result", frame.result, RefreshResult)
                self._renew_before(refreshed.expires)
            return []
        if frame.error is not None:
            channel = self._pending.get(frame.id or 0)
            if frame.error.code == "moved" and frame.error.url and channel is not None:
                # docs/protocol.md §9: the channel is served elsewhere; the others
                # stay here. Once every subscribe is answered, the subscription
                # takes the moved ones to their owners.
                del self._pending[frame.id or 0]
                self._moved[channel] = node_base(frame.error.url)
                return self._after_replies()
            raise error_for(frame.error.code, frame.error.message)
        if not frame.result:
            raise ProtocolViolation(f"reply {frame.id} has neither result nor error")
        if frame.id == self._connect_id:
            result = decode("connect result", frame.result, ConnectResult)
            self._silence_s = max(result.ping, 0.1) * SILENT_PINGS
            self._renew_before(result.expires)
            return []
        channel = self._pending.pop(frame.id or 0, None)
        if channel is None:
            return []
        subscribed = decode("subscribe result", frame.result, SubscribeResult)
        tracker = self._tracker
        events = tracker.receive_subscribed(
            channel,
            Position(subscribed.epoch, subscribed.offset),
            recovered=subscribed.recovered,
        )
        for publication in to_publications(subscribed.publications):
            events.extend(tracker.receive_publication(publication))
        return events + self._after_replies()

    def _after_replies(self) -> list[Event]:
        """Once every subscribe is answered: subscribed, or redirected for those moved.

        Raises:
            Redirected: some channels are served by other nodes.
        """
        if self._pending:
            return []
        if self._moved:
            raise Redirected(self._moved)
        self._attempt.subscribed = True
        return []

    # -- token renewal -----------------------------------------------------------------

    def _renew_before(self, expires: int | None) -> None:
        """Schedule a ``refresh`` shortly before ``expires``, if a new token can be had."""
        if expires is None or not self._tokens.is_renewable:
            return
        if self._renewal is not None:
            self._renewal.cancel()
        delay_s = renew_in_s(expires, time.time())
        self._renewal = asyncio.get_running_loop().create_task(self._renew(delay_s))

    async def _renew(self, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        try:
            token = await self._tokens.fresh()
        except Exception as exc:  # the application's callable: the close at expiry follows
            logger.warning("the token callable failed: %r", exc)
            return
        command_id = next(self._ids)
        self._refresh_ids.add(command_id)
        with contextlib.suppress(websockets.ConnectionClosed):
            await self._send({"op": "refresh", "id": command_id, "token": token})

    async def stop_renewal(self) -> None:
        """Cancel a pending renewal (the connection ends)."""
        if self._renewal is not None:
            self._renewal.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewal
            self._renewal = None
