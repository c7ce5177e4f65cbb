"""The WebSocket transport ``/ws`` (docs/protocol.md §3), as an ASGI endpoint.

I/O: reads frames from the ASGI ``receive`` callable. Replies and pushes go to the
connection's ``Outbound``: under a plain ASGI server a queue that a second task drains
through ``send``, one frame per reply or push; under tidings' native server each is
framed and written to the socket at once (``outbound.py``; slow consumers: see
``connection.py``). The ASGI handler reads and answers commands in order.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final
from urllib.parse import parse_qs

from starlette.types import Receive, Scope, Send

from tidings.core import commands as cmd
from tidings.core.node_call import RELAY_HEADER
from tidings.core.permission import Credentials, check_publish, check_subscribe
from tidings.core.publication import ClientInfo
from tidings.core.rate import TokenBucket
from tidings.core.recovery import Replay
from tidings.core.wire import EncodedPublication, encode_json, position_fields, publication_frames
from tidings.errors import (
    BadRequest,
    ConnectionClosed,
    PermissionDenied,
    RateLimited,
    RequestError,
    Unauthorized,
)
from tidings.hub.registry import PresenceEvent
from tidings.transports.admission import Admission
from tidings.transports.close_codes import (
    CLOSE_INTERNAL,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_VIOLATION,
    CLOSE_UNAUTHORIZED,
)
from tidings.transports.connection import StreamConnection
from tidings.transports.context import TransportContext
from tidings.transports.deadlines import Deadline
from tidings.transports.http import bearer_token
from tidings.transports.outbound import Outbound, QueuedOutbound, direct_outbound

logger = logging.getLogger(__name__)

PROTOCOL_VERSION: Final = "1"
_PING_PUSH: Final = '{"push":"ping"}'
# A reply this big (a recovery, a history page) holds the next command until it is sent.
LARGE_REPLY_CHARS: Final = 64 * 1024


class WebSocketSession(StreamConnection):
    """One WebSocket client: commands in, replies and pushes out."""

    __slots__ = ("_admission", "_connect_deadline", "_queued", "_rate", "_send", "connected")

    def __init__(
        self,
        context: TransportContext,
        scope: Scope,
        send: Send,
        admission: Admission | None = None,
    ) -> None:
        # The native server writes frames itself; under any other ASGI server a writer
        # task drains a queue through ``send``.
        out: Outbound | None = direct_outbound(scope)
        self._queued: QueuedOutbound | None = None
        if out is None:
            out = self._queued = QueuedOutbound(self._write, self._end)
        super().__init__(context, out)
        self.peer = scope.get("client")
        self._send = send
        self._admission = admission or Admission(context)
        self.connected = False  # authenticated, by handshake token or connect command
        self._connect_deadline: Deadline | None = None
        limits = context.limits
        self._rate = TokenBucket(limits.command_rate, limits.command_burst, self.last_sent_s)

    # -- StreamConnection ----------------------------------------------------------------

    def deliver(self, publication: EncodedPublication) -> None:
        """Queue a publication push (hub fan-out)."""
        self._enqueue(publication.websocket)

    def deliver_presence(self, event: PresenceEvent) -> None:
        """Queue a join/leave push (hub)."""
        self._enqueue(event.websocket)

    @property
    def _heartbeat_interval_s(self) -> float:
        return self._context.ping_interval_s

    def _heartbeat_chunk(self) -> str:
        return _PING_PUSH  # docs/protocol.md §3: browsers cannot see ping frames

    def _goodbye(
        self, code: int, reason: str, reconnect: bool, url: str | None, delay_ms: int | None
    ) -> str:
        push: dict[str, object] = {
            "push": "disconnect",
            "code": code,
            "reason": reason,
            "reconnect": reconnect,
        }
        if url is not None:
            push["url"] = url
        if delay_ms is not None:
            push["delay"] = delay_ms
        return encode_json(push).decode()

    async def _write(self, chunks: list[str]) -> None:
        send = self._send
        for text in chunks:  # one frame per command reply or push
            await send({"type": "websocket.send", "text": text})

    async def _end(self, code: int, reason: str) -> None:
        # A close reason must fit in a control frame (123 bytes).
        await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})

    # -- the connection's life ---------------------------------------------------------

    async def run(self, scope: Scope, receive: Receive) -> None:
        """Serve the connection until it closes. Called once, by the ASGI endpoint."""
        context = self._context
        accepted, token = await self._handshake(scope, receive)
        if not accepted:
            return
        if self._queued is not None:
            self._queued.start()
        registered = False
        try:
            self._admission.admit_connection()
            if token is not None or not context.authenticator.requires_token:
                await self._authenticate(token)
            self._admission.admit_session(self, authenticated=self.connected)
            registered = True
            if not self.connected:
                self._await_connect()
            await self._read_loop(receive)
        except ConnectionClosed as closed:
            self.disconnect(closed.code, closed.reason, reconnect=closed.reconnect)
        except RequestError as error:
            close = self._admission.websocket_close(error, self.peer)
            self.disconnect(close.code, close.reason, reconnect=close.reconnect, url=close.url)
        except Exception:
            logger.exception("session %s failed", self.client_id)
            self.disconnect(CLOSE_INTERNAL, "internal error", reconnect=True)
        finally:
            if self._connect_deadline is not None:
                self._connect_deadline.cancel()
            if registered:
                context.sessions.remove(self)
            await self._leave_all()
            await self._stop_outbound()

    async def _handshake(self, scope: Scope, receive: Receive) -> tuple[bool, str | None]:
        """Accept or refuse the handshake; return whether accepted, and its token.

        A function of its own so that the request's headers are not held for the
        connection's whole life (idle connections cost memory only: DESIGN.md).
        """
        message = await receive()
        if message["type"] != "websocket.connect":
            return False, None
        headers = _headers(scope)
        try:
            self._admission.check_origin(
                headers.get("origin"), headers.get("host"), scope.get("scheme", "ws")
            )
        except RequestError as error:
            # Closing before accepting makes the server answer the handshake with 403.
            close = self._admission.websocket_close(error, self.peer)
            await self._send({"type": "websocket.close", "code": close.code})
            return False, None
        await self._send({"type": "websocket.accept"})
        self.is_relay = headers.get(RELAY_HEADER) == "1"
        return True, _handshake_token(scope, headers)

    async def _authenticate(self, token: str | None) -> None:
        self.credentials = await self._admission.authenticate(token)
        self.connected = True
        self.watch_expiry()

    def _await_connect(self) -> None:
        """Give a socket that must authenticate ``connect_timeout`` to send its ``connect``:
        until then it holds a slot of the node's small unauthenticated allowance."""
        timeout_s = self._context.limits.connect_timeout_s
        if timeout_s > 0:
            self._connect_deadline = self._context.deadlines.call_after(
                timeout_s, self._connect_too_late
            )

    def _connect_too_late(self) -> None:
        self._connect_deadline = None
        if not self.connected:
            timeout_s = self._context.limits.connect_timeout_s
            reason = f"no connect command with a token within {timeout_s:g} s"
            self.disconnect(CLOSE_UNAUTHORIZED, reason, reconnect=False)

    async def _read_loop(self, receive: Receive) -> None:
        max_frame = self._context.limits.max_frame_bytes
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                return
            if kind != "websocket.receive":
                continue
            text = message.get("text")
            if text is None:
                raise ConnectionClosed(
                    CLOSE_PROTOCOL_VIOLATION, "frames must be text, one JSON command each"
                )
            # A character is 1-4 bytes in UTF-8: encode only when the count is in doubt.
            if len(text) * 4 > max_frame and len(text.encode()) > max_frame:
                raise ConnectionClosed(CLOSE_MESSAGE_TOO_BIG, f"frame over {max_frame:,} bytes")
            if self.is_closing:
                continue  # closing: read until the client's close, answer nothing
            await self._handle_frame(text)
            if self.has_reply_backlog():
                # Replies count against the outbound bound: past it no further command
                # is read until they have mostly left, so a client that sends without
                # reading is held back by TCP instead of by this node's memory
                # (docs/protocol.md §2.5). Nothing is lost: every command is answered.
                logger.debug(
                    "session %s: replies unsent past the bound; commands wait", self.client_id
                )
                await self.wait_replies_taken()

    async def _handle_frame(self, text: str) -> None:
        try:
            command = cmd.parse_command(text)
        except BadRequest as error:
            command_id = cmd.command_id(text)
            if command_id is None:
                raise ConnectionClosed(
                    CLOSE_PROTOCOL_VIOLATION,
                    "a frame must be a JSON object with an integer id and an op",
                ) from None
            self._refuse(command_id, error)  # a bad request: answered, not logged
            return
        if not self._rate.take(time.monotonic()):
            self._refuse(command.id, RateLimited(self._context.limits.command_rate))
            return
        try:
            result = await self._dispatch(command)
        except RequestError as error:
            self._refuse(command.id, error)
            if isinstance(error, Unauthorized) and not (
                isinstance(command, cmd.Refresh) and self.connected
            ):
                # Only a refused refresh leaves the connection on its current token.
                raise ConnectionClosed(CLOSE_UNAUTHORIZED, error.message) from None
            return
        reply = encode_json({"id": command.id, "result": result}).decode()
        self._enqueue(reply, requested=True)
        if len(reply) > LARGE_REPLY_CHARS:
            await self.wait_replies_taken()  # no next command until this one is on its way

    def _refuse(self, command_id: int, error: RequestError) -> None:
        """Answer a failed command; a refusal is logged (once, by ``Admission``)."""
        self._enqueue(
            self._admission.websocket_refusal(command_id, error, self.peer), requested=True
        )

    # -- commands ----------------------------------------------------------------------

    async def _dispatch(self, command: cmd.Command) -> dict[str, Any]:
        if isinstance(command, cmd.Connect):
            return await self._connect(command)
        if not self.connected:
            raise Unauthorized("send a connect command with a token first")
        if isinstance(command, cmd.Subscribe):
            return await self._subscribe(command)
        if isinstance(command, cmd.Refresh):
            return await self._refresh(command)
        if isinstance(command, cmd.Unsubscribe):
            return await self._unsubscribe(command)
        if isinstance(command, cmd.Publish):
            return await self._publish(command)
        if isinstance(command, cmd.History):
            return await self._history(command)
        if isinstance(command, cmd.Presence):
            return await self._presence(command)
        return {}  # ping

    async def _connect(self, command: cmd.Connect) -> dict[str, Any]:
        if self.subscriptions:
            raise BadRequest("connect must come before any subscribe")
        if command.token is not None or not self.connected:
            old_user = self.user
            await self._authenticate(command.token)
            sessions = self._context.sessions
            sessions.rename(self, old_user)
            sessions.mark_authenticated(self)
            if self._connect_deadline is not None:
                self._connect_deadline.cancel()
                self._connect_deadline = None
        result: dict[str, Any] = {
            "client": self.client_id,
            "user": self.user,
            "ping": self._context.ping_interval_s,
            "version": PROTOCOL_VERSION,
        }
        return _with_expires(result, self.credentials)

    async def _refresh(self, command: cmd.Refresh) -> dict[str, Any]:
        """Take a new token of the same user; the expiry moves to the new token's."""
        credentials = await self._admission.authenticate(command.token)
        if credentials.user != self.user:
            raise PermissionDenied(
                f"a refresh token must name this connection's user {self.user!r}, not "
                f"{credentials.user!r}: connect again to change user"
            )
        self.credentials = credentials
        self.watch_expiry()
        return _with_expires({}, credentials)

    async def _subscribe(self, command: cmd.Subscribe) -> dict[str, Any]:
        channel = command.channel_name
        options = self._admission.admit_subscribe(channel, self.credentials, self.subscriptions)
        since = None if command.since is None else command.since.to_position()
        self.subscriptions.add(channel)
        try:
            result = await self._context.hub.subscribe(
                channel, self, since, presence=options.presence
            )
        except BaseException:
            self.subscriptions.discard(channel)
            raise
        assert result is not None, "the session tracks its own subscriptions"
        # No await from here until the reply is queued: see hub.py, theory of operation.
        return {
            **position_fields(result.position),
            "recovered": result.recovered,
            "publications": publication_frames(result.publications),
        }

    async def _unsubscribe(self, command: cmd.Unsubscribe) -> dict[str, Any]:
        channel = command.channel_name
        if channel in self.subscriptions:
            self.subscriptions.discard(channel)
            presence = self._context.namespaces.options_for(channel).presence
            await self._context.hub.unsubscribe(channel, self, presence=presence)
        return {}

    async def _publish(self, command: cmd.Publish) -> dict[str, Any]:
        channel = command.channel_name
        options = self._context.namespaces.options_for(channel)
        check_publish(channel, options, self.credentials)
        self._admission.admit_here(channel)  # docs/protocol.md §9: the owner sequences
        data = cmd.publication_data(bytes(command.data), options.max_data_bytes)
        result = await self._context.hub.publish(
            channel,
            data,
            key=command.key,
            info=ClientInfo(self.client_id, self.user),
        )
        return position_fields(result.position)

    async def _history(self, command: cmd.History) -> dict[str, Any]:
        channel = command.channel_name
        check_subscribe(channel, self._context.namespaces.options_for(channel), self.credentials)
        self._admission.admit_here(channel)  # the owner keeps the history
        since = None if command.since is None else command.since.to_position()
        read = await self._context.hub.history(channel, since, command.limit)
        recovery = read.recovery
        result: dict[str, Any] = position_fields(read.head)
        if isinstance(recovery, Replay):
            result["publications"] = publication_frames(recovery.publications)
        else:
            result["publications"] = []
        if since is not None:
            result["recovered"] = isinstance(recovery, Replay)
        return result

    async def _presence(self, command: cmd.Presence) -> dict[str, Any]:
        channel = command.channel_name
        options = self._context.namespaces.options_for(channel)
        check_subscribe(channel, options, self.credentials)
        if not options.presence:
            raise PermissionDenied(f"presence is off in the namespace of {channel}")
        self._admission.admit_here(channel)
        clients = await self._context.hub.presence(channel)
        return {"clients": {client: {"user": user} for client, user in clients.items()}}


def _with_expires(result: dict[str, Any], credentials: Credentials) -> dict[str, Any]:
    """Add ``expires`` (the token's ``exp``, Unix seconds) where the token has one: when
    the client must have refreshed by."""
    if credentials.expires is not None:
        result["expires"] = credentials.expires
    return result


def _headers(scope: Scope) -> dict[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def _handshake_token(scope: Scope, headers: dict[str, str]) -> str | None:
    token = bearer_token(headers.get("authorization"))
    if token is not None:
        return token
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    tokens = query.get("token")
    return tokens[0] if tokens else None


class WebSocketTransport:
    """The ASGI application serving ``/ws``: one ``WebSocketSession`` per connection."""

    __slots__ = ("_admission", "_context")

    def __init__(self, context: TransportContext) -> None:
        self._context = context
        self._admission = Admission(context)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        session = WebSocketSession(self._context, scope, send, self._admission)
        await session.run(scope, receive)
