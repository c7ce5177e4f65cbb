"""The Server-Sent Events transport ``GET /sse`` (docs/protocol.md §4), as an ASGI endpoint.

I/O: one streaming HTTP response per client. Under a plain ASGI server a writer task
drains the connection's queue through ``send`` (events coalesce into one body chunk
per wake-up); under tidings' native server each event is written to the socket at
once (``outbound.py``). A second task waits for the client to go away. Every
publication is one ``event: pub`` with one ``data:`` line (publication JSON never
holds a raw CR or LF: see ``commands.single_line_json``) and an ``id:`` that is the
cursor of *all* the stream's channels after it, so a browser's automatic
``Last-Event-ID`` resumes every channel. A stream whose token expires ends with
``event: disconnect`` (4001, "token expired", reconnect: the client comes back with
a fresh token): ``StreamConnection.watch_expiry``.

Start-up order matters: the ``subscribed`` event's ``id`` is the cursor of the
positions the stream starts *from* (before any replayed publication), so a client
cut off during the replay resumes the replay instead of skipping it. Live
publications that arrive while later channels are still subscribing are held and
written after the ``subscribed`` event and the replays.

The replays are written in pieces: whenever more than the outbound bound waits to be
sent, the stream waits for it to leave before writing more, so a client that does not
read holds at most the bound, not every channel's history. What arrives meanwhile is
held within the same bound; past it the stream is cut as a slow consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Final
from urllib.parse import parse_qs

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tidings.core.channel import ChannelName
from tidings.core.cursor import encode_cursor
from tidings.core.node_call import RELAY_HEADER
from tidings.core.publication import Position, Publication
from tidings.core.resume import parse_channel_list, resume_positions
from tidings.core.wire import EncodedPublication, encode_json
from tidings.errors import RequestError
from tidings.hub.hub import SubscribeResult
from tidings.hub.registry import PresenceEvent
from tidings.transports.admission import Admission
from tidings.transports.connection import StreamConnection
from tidings.transports.context import TransportContext
from tidings.transports.http import (
    cors_headers,
    preflight_response,
    request_target,
    request_token,
)
from tidings.transports.outbound import Outbound, QueuedOutbound, direct_outbound

logger = logging.getLogger(__name__)

SSE_HEARTBEAT_S: Final = 15.0  # docs/protocol.md §4: a comment after 15 s of silence
# EventSource reconnect delay: randomised per stream so a restarted node's clients
# do not all come back in the same instant.
RETRY_MIN_MS: Final = 1000
RETRY_MAX_MS: Final = 3000


class SseSession(StreamConnection):
    """One SSE stream: its channels' positions and the events it writes."""

    __slots__ = ("_held", "_held_bytes", "_live", "_queued", "_send", "positions")

    def __init__(self, context: TransportContext, scope: Scope, send: Send) -> None:
        out: Outbound | None = direct_outbound(scope)
        self._queued: QueuedOutbound | None = None
        if out is None:
            out = self._queued = QueuedOutbound(self._write, self._end)
        super().__init__(context, out)
        self.peer = scope.get("client")
        self._send = send
        self.positions: dict[ChannelName, Position] = {}
        self._live = False
        self._held: list[EncodedPublication] = []
        self._held_bytes = 0

    # -- StreamConnection ----------------------------------------------------------------

    def deliver(self, publication: EncodedPublication) -> None:
        """Queue a ``pub`` event with the stream's cursor after it (hub fan-out)."""
        if not self._live:
            if self.is_closing:
                return
            # Held while the opening replay is written: bounded like anything pending.
            self._held_bytes += len(publication.publication.data)
            if self._held_bytes > self._bound:
                self._cut_slow_consumer(self._held_bytes)
                return
            self._held.append(publication)
            return
        self._write_publication(publication)

    def _write_publication(self, encoded: EncodedPublication, *, replay: bool = False) -> None:
        self.positions[encoded.publication.channel] = encoded.position
        if len(self.positions) == 1:
            event = encoded.sse_single  # shared by every single-channel stream
        else:
            event = encoded.sse_event(encode_cursor(self.positions))
        # The opening replay was asked for: it does not count as falling behind.
        self._enqueue(event, requested=replay)

    def deliver_presence(self, event: PresenceEvent) -> None:
        """Presence events are not part of SSE version 1; nothing is sent."""

    @property
    def _heartbeat_interval_s(self) -> float:
        return SSE_HEARTBEAT_S

    def _heartbeat_chunk(self) -> str:
        return ": ping\n\n"

    def _goodbye(
        self, code: int, reason: str, reconnect: bool, url: str | None, delay_ms: int | None
    ) -> str:
        data: dict[str, object] = {"code": code, "reason": reason, "reconnect": reconnect}
        if url is not None:
            data["url"] = url
        if delay_ms is not None:
            data["delay"] = delay_ms
        return f"event: disconnect\ndata: {encode_json(data).decode()}\n\n"

    async def _write(self, chunks: list[str]) -> None:
        body = "".join(chunks).encode()
        await self._send({"type": "http.response.body", "body": body, "more_body": True})

    async def _end(self, code: int, reason: str) -> None:
        await self._send({"type": "http.response.body", "body": b"", "more_body": False})

    # -- the stream's life ---------------------------------------------------------------

    async def open(self, channels: list[ChannelName], since: dict[ChannelName, Position]) -> None:
        """Subscribe every channel and queue ``retry``, ``subscribed`` and the replays."""
        hub = self._context.hub
        namespaces = self._context.namespaces
        results: dict[ChannelName, SubscribeResult] = {}
        for channel in channels:
            presence = namespaces.options_for(channel).presence
            result = await hub.subscribe(channel, self, since.get(channel), presence=presence)
            assert result is not None, "a new stream holds no channel yet"
            self.subscriptions.add(channel)
            results[channel] = result
        self.positions = {channel: _start(result) for channel, result in results.items()}
        subscribed = {
            channel: {
                "epoch": result.position.epoch,
                "offset": result.position.offset,
                "recovered": result.recovered,
            }
            for channel, result in results.items()
        }
        retry_ms = random.randint(RETRY_MIN_MS, RETRY_MAX_MS)
        if self._queued is not None:
            self._queued.start()  # it drains the replay while it is written
        self._enqueue(
            requested=True,
            chunk=f"retry: {retry_ms}\nid: {encode_cursor(self.positions)}\nevent: subscribed\n"
            f"data: {encode_json({'channels': subscribed}).decode()}\n\n",
        )
        for result in results.values():
            for publication in result.publications:
                self._write_publication(EncodedPublication(publication), replay=True)
                if self.has_reply_backlog():
                    # The replay is written in pieces: never more than the outbound
                    # bound waits to be sent (docs/protocol.md §2.5).
                    logger.debug("stream %s: replay waits for the client to read", self.client_id)
                    await self.wait_replies_taken()
                    if self.is_closing or self.has_reply_backlog():
                        return  # cut, or nothing leaves any more: the client is gone
        self._live = True
        self._held_bytes = 0
        held, self._held = self._held, []
        for encoded in held:  # the hub sent these after each channel's result: all new
            self._write_publication(encoded)

    async def run(self, receive: Receive) -> None:
        """Stream until the client leaves or the server ends the stream."""
        watcher = asyncio.create_task(self._watch_disconnect(receive))
        try:
            await self._out.run()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch_disconnect(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # The client is gone: end without a goodbye nobody would read.
        self._closing = (0, "client left")
        self._out.end_silently()


def _start(result: SubscribeResult) -> Position:
    """The position a stream starts from: before the first publication it will write."""
    if result.publications:
        first: Publication = result.publications[0]
        return Position(first.epoch, first.offset - 1)
    return result.position


class SseTransport:
    """The ASGI application serving ``/sse``."""

    __slots__ = ("_admission", "_context")

    def __init__(self, context: TransportContext) -> None:
        self._context = context
        self._admission = Admission(context)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        context = self._context
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if scope["method"] == "OPTIONS":
            await preflight_response(origin, context.allowed_origins)(scope, receive, send)
            return
        session = SseSession(context, scope, send)
        session.is_relay = headers.get(RELAY_HEADER) == "1"
        admission = self._admission
        try:
            access = admission.check_origin(origin, headers.get("host"), scope["scheme"])
            channels, since = _parse_request(scope, headers)
            admission.check_channel_count(channels)
            cookie = headers.get("cookie") if access.accepts_cookies else None
            token = _token(scope, headers, cookie)
            session.credentials = await admission.admit_request("sse", channels, token)
            if scope["method"] != "HEAD":  # a HEAD opens no stream
                admission.admit_session(session)
        except RequestError as error:
            status, error_headers, body = admission.http_refusal(
                error, session.peer, request_target(scope)
            )
            # (None for a refused origin: its page may not read the answer.)
            error_headers.update(cors_headers(origin, context.allowed_origins))
            await Response(body, status, error_headers)(scope, receive, send)
            return
        cors = cors_headers(origin, context.allowed_origins)
        if scope["method"] == "HEAD":
            # The stream's headers only (RFC 9110 §9.3.2): no subscription, no body.
            start = {"type": "http.response.start", "status": 200, "headers": _stream_headers(cors)}
            await send(start)
            await send({"type": "http.response.body", "body": b"", "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _stream_headers(cors),
                }
            )
            # After the response started: an expiry ends the stream with a
            # ``disconnect`` event (4001, "token expired"), never before its headers.
            session.watch_expiry()
            await session.open(channels, since)
            await session.run(receive)
        except Exception:
            # A task boundary: the stream ends; nothing about the failure is sent.
            logger.exception("SSE stream %s failed", session.client_id)
        finally:
            context.sessions.remove(session)
            await session._leave_all()
            await session._stop_outbound()


def _parse_request(
    scope: Scope, headers: dict[str, str]
) -> tuple[list[ChannelName], dict[ChannelName, Position]]:
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    channels = parse_channel_list(query.get("channel", []))
    cursors = query.get("cursor", [])
    since = resume_positions(
        channels,
        last_event_id=headers.get("last-event-id"),
        cursor=cursors[0] if cursors else None,
        since=query.get("since", []),
    )
    return channels, since


def _token(scope: Scope, headers: dict[str, str], cookie: str | None) -> str | None:
    tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
    return request_token(headers.get("authorization"), tokens[0] if tokens else None, cookie)


def _stream_headers(cors: dict[str, str]) -> list[tuple[bytes, bytes]]:
    headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache, no-store",
        "x-accel-buffering": "no",  # ask reverse proxies not to buffer the stream
        **{name.lower(): value for name, value in cors.items()},
    }
    return [(name.encode(), value.encode()) for name, value in headers.items()]
