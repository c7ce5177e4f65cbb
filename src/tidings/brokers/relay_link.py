"""A relay's link to its upstream node over WebSocket: one connection carrying every
channel the relay follows (docs/protocol.md §3), reconnecting and resuming. I/O over
``websockets``.

Theory of operation
-------------------
The link runs connections one after another. Each sends ``connect`` (with the relay's
token in the handshake), then one ``subscribe`` per followed channel, with ``since``
set to the position the listener holds (``position_of``): the upstream answers with
the publications after it (``recovered: true``) or with its head and ``recovered:
false`` when it could not recover them. A channel followed while connected is
subscribed at once on the same connection. Replies come in command order and a
channel's pushes come after its subscribe reply, so feeding frames to the listener in
arrival order keeps every channel in order.

Only the *latest* subscribe of a channel counts: a channel unfollowed and followed
again has a stale reply in flight, which is dropped by its command id; a pub of a
channel not followed is dropped too. A connection that ends for any reason (network,
upstream restart, a silent link past twice the announced ping interval) is followed by
a backoff delay (full jitter) and a new connection, which resubscribes every channel
from the listener's positions: nothing lost, nothing repeated (the listener judges
each publication by ``core.catchup``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Callable
from typing import Final, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect

from tidings.client.errors import error_for, is_retryable
from tidings.client.frames import (
    ConnectResult,
    Disconnect,
    SubscribeResult,
    WsFrame,
    decode,
    to_publication,
    to_publications,
)
from tidings.core.backoff import Backoff
from tidings.core.channel import ChannelName
from tidings.core.node_call import RELAY_HEADER
from tidings.core.publication import Position, Publication
from tidings.core.wire import PublicationFrame, encode_json
from tidings.errors import RequestError

logger = logging.getLogger(__name__)

OPEN_TIMEOUT_S: Final = 10.0
CLOSE_TIMEOUT_S: Final = 2.0
# A silent link is dead after this many announced ping intervals (docs/protocol.md §3).
SILENT_PINGS: Final = 2
# A reply of a large recovery may be big; the upstream is a tidings node we trust, but
# the relay's memory stays bounded whatever it sends.
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024
UNSUBSCRIBE_TIMEOUT_S: Final = 5.0
# A subscribe the upstream refused for now (too_many_requests...) is sent again after a
# random delay in this range, so that many do not come back at once.
RETRY_MIN_S: Final = 0.5
RETRY_MAX_S: Final = 2.0
RECONNECT_BASE_S: Final = 0.1
RECONNECT_CAP_S: Final = 2.0  # a relay is one client of its upstream: come back soon


# The relay's token now: read for each connection (the token file may have changed).
TokenSource = Callable[[], str | None]


class UpstreamListener(Protocol):
    """What a link reports to (the relay broker). Called on the event loop; must not
    raise."""

    def position_of(self, channel: ChannelName) -> Position | None:
        """The position to resume ``channel`` from, ``None`` for its head."""
        ...

    def receive_subscribed(
        self,
        channel: ChannelName,
        head: Position,
        recovered: bool,
        publications: tuple[Publication, ...],
    ) -> None:
        """The upstream subscribed ``channel``: ``recovered`` (the publications after
        the position given follow, ``publications`` first), or not (start at ``head``)."""
        ...

    def receive_publication(self, publication: Publication) -> None:
        """A live publication of a followed channel."""
        ...

    def receive_refusal(self, channel: ChannelName, error: RequestError) -> None:
        """The upstream refused to subscribe ``channel`` (permission, bad name)."""
        ...


class UpstreamLink(Protocol):
    """A relay's connection(s) to its upstream: follows channels, reports to a listener."""

    @property
    def is_connected(self) -> bool:
        """Whether the upstream is reachable through the link now."""
        ...

    def start(self, listener: UpstreamListener) -> None:
        """Start connecting (in a background task) and reporting to ``listener``."""
        ...

    async def wait_connected(self) -> None:
        """Return once the link is connected (at once if it is)."""
        ...

    async def close(self) -> None:
        """Stop; idempotent."""
        ...

    async def follow(self, channel: ChannelName) -> None:
        """Subscribe ``channel`` upstream, now if connected, else on the next connection."""
        ...

    async def unfollow(self, channel: ChannelName) -> None:
        """Unsubscribe ``channel`` upstream; idempotent."""
        ...


def new_backoff() -> Backoff:
    """The reconnect delays of a link."""
    return Backoff(base_s=RECONNECT_BASE_S, cap_s=RECONNECT_CAP_S, uniform=random.uniform)


class WebSocketLink:
    """One WebSocket to the upstream's ``/ws`` for every followed channel; see the
    module docstring."""

    def __init__(self, url: str, token: TokenSource) -> None:
        """Link to ``url`` (``ws://host:port/ws``) with ``token()`` (called for each
        connection) as a bearer token."""
        self.url = url
        self._token = token
        self._listener: UpstreamListener | None = None
        self._channels: set[ChannelName] = set()
        self._connection: ClientConnection | None = None
        self._connected = asyncio.Event()
        self._ids = itertools.count(1)
        self._subscribing: dict[int, ChannelName] = {}  # subscribe id -> channel
        self._latest: dict[ChannelName, int] = {}  # channel -> its latest subscribe id
        self._unsubscribing: dict[int, asyncio.Future[None]] = {}  # unsubscribe id -> reply
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()

    @property
    def is_connected(self) -> bool:
        """Whether a connection is open now (and the upstream answered ``connect``)."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once a connection is open."""
        await self._connected.wait()

    def start(self, listener: UpstreamListener) -> None:
        """Start the connection task."""
        self._listener = listener
        self._task = asyncio.create_task(self._run(), name="tidings-relay-link")

    async def close(self) -> None:
        """Close the connection (normally, 1000) and end the connection task."""
        task, self._task = self._task, None
        self._closing = True
        connection = self._connection
        if connection is not None:
            await connection.close()
        for running in [task, *self._retries]:
            if running is not None:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running

    async def follow(self, channel: ChannelName) -> None:
        """Subscribe ``channel`` on the open connection, or on the next one."""
        self._channels.add(channel)
        connection = self._connection
        if connection is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await self._subscribe(connection, channel)

    async def unfollow(self, channel: ChannelName) -> None:
        """Unsubscribe ``channel`` and return once the upstream confirmed (or the
        connection ended): publications it pushed before are still handed on, none after."""
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        connection = self._connection
        command_id = next(self._ids)
        confirmed = asyncio.get_running_loop().create_future()
        self._unsubscribing[command_id] = confirmed
        try:
            if connection is not None:
                command = {"op": "unsubscribe", "id": command_id, "channel": channel}
                await connection.send(encode_json(command).decode())
                async with asyncio.timeout(UNSUBSCRIBE_TIMEOUT_S):
                    await confirmed
        except (websockets.ConnectionClosed, TimeoutError):
            pass  # the connection ended: nothing more of the channel arrives on it
        finally:
            self._unsubscribing.pop(command_id, None)
            if channel not in self._channels:  # not followed again meanwhile
                self._latest.pop(channel, None)

    async def _subscribe(self, connection: ClientConnection, channel: ChannelName) -> None:
        assert self._listener is not None
        command_id = next(self._ids)
        command: dict[str, object] = {"op": "subscribe", "id": command_id, "channel": channel}
        position = self._listener.position_of(channel)
        if position is not None:
            command["since"] = {"epoch": position.epoch, "offset": position.offset}
        self._subscribing[command_id] = channel
        self._latest[channel] = command_id
        await connection.send(encode_json(command).decode())

    async def _run(self) -> None:
        backoff = new_backoff()
        while True:
            try:
                await self._session(backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a task boundary: any failure means reconnect
                if self._closing:
                    return
                logger.warning("relay link to %s lost: %s; reconnecting", self.url, exc)
            finally:
                self._connection = None
                self._connected.clear()
                self._subscribing.clear()
                for confirmed in self._unsubscribing.values():
                    if not confirmed.done():
                        confirmed.set_result(None)
            await asyncio.sleep(backoff.next_delay_s())

    async def _session(self, backoff: Backoff) -> None:
        token = self._token()
        async with connect(
            self.url,
            # Saying it is a relay puts this link first in the upstream's fan-out.
            additional_headers={
                RELAY_HEADER: "1",
                **({"Authorization": f"Bearer {token}"} if token else {}),
            },
            max_size=MAX_FRAME_BYTES,
            open_timeout=OPEN_TIMEOUT_S,
            close_timeout=CLOSE_TIMEOUT_S,
        ) as connection:
            connect_id = next(self._ids)
            await connection.send(encode_json({"op": "connect", "id": connect_id}).decode())
            # Open before subscribing: a channel followed from here on is subscribed by
            # ``follow``, one followed earlier by this loop; none twice, none missed.
            self._connection = connection
            for channel in list(self._channels):
                if channel in self._channels:  # not unfollowed while an earlier one was sent
                    await self._subscribe(connection, channel)
            silence_s = OPEN_TIMEOUT_S
            while True:
                try:
                    async with asyncio.timeout(silence_s):
                        raw = await connection.recv()
                except websockets.ConnectionClosed:
                    break
                frame = decode("WebSocket frame", raw, WsFrame)
                if frame.id == connect_id:
                    silence_s = self._receive_connect(frame)
                    self._connected.set()
                    backoff.reset()
                    logger.info("relay link to %s connected", self.url)
                elif frame.id is not None:
                    self._receive_reply(frame.id, frame)
                elif frame.push == "pub":
                    self._receive_pub(raw)
                elif frame.push == "disconnect":
                    goodbye = decode("disconnect push", raw, Disconnect)
                    logger.info(
                        "upstream disconnects the relay (%d %s)", goodbye.code, goodbye.reason
                    )
        code, reason = connection.close_code, connection.close_reason
        raise ConnectionError(f"closed with {code} {reason}".rstrip())

    def _receive_connect(self, frame: WsFrame) -> float:
        if frame.error is not None:
            raise error_for(frame.error.code, frame.error.message)
        result = decode("connect result", frame.result, ConnectResult)
        return SILENT_PINGS * result.ping if result.ping > 0 else OPEN_TIMEOUT_S

    def _receive_reply(self, command_id: int, frame: WsFrame) -> None:
        confirmed = self._unsubscribing.get(command_id)
        if confirmed is not None:
            if not confirmed.done():
                confirmed.set_result(None)
            return
        channel = self._subscribing.pop(command_id, None)
        if channel is None or self._latest.get(channel) != command_id:
            return  # an unsubscribe's reply, or a subscribe superseded since
        assert self._listener is not None
        if frame.error is not None:
            error = error_for(frame.error.code, frame.error.message)
            if is_retryable(error) and self._connection is not None:
                # The upstream's command rate (a relay resubscribing many channels at
                # once) or a passing failure: ask again shortly, on this connection.
                self._retry_later(channel, self._connection)
                return
            self._listener.receive_refusal(channel, error)
            return
        result = decode("subscribe result", frame.result, SubscribeResult)
        publications = tuple(to_publications(result.publications))
        head = Position(result.epoch, result.offset)
        self._listener.receive_subscribed(channel, head, result.recovered, publications)

    def _retry_later(self, channel: ChannelName, connection: ClientConnection) -> None:
        async def retry() -> None:
            await asyncio.sleep(random.uniform(RETRY_MIN_S, RETRY_MAX_S))
            if channel in self._channels and self._connection is connection:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await self._subscribe(connection, channel)

        task = asyncio.create_task(retry())
        self._retries.add(task)  # held until done: a task nobody holds may be collected
        task.add_done_callback(self._retries.discard)

    def _receive_pub(self, raw: str | bytes) -> None:
        publication = to_publication(decode("pub push", raw, PublicationFrame))
        if publication.channel in self._latest:
            assert self._listener is not None
            self._listener.receive_publication(publication)
