"""Admission: the one door every client transport goes through, and the one place its
refusals are logged.

I/O: waits for a JWKS key the token needs (``Authenticator.pending_keys``), and logs
refusals through ``Refusals``. The rules are core's (``core.origin``,
``core.admission``, ``core.permission``, ``core.placement``); this module applies them
in one order for the WebSocket transport, SSE, and both doors of polling (the ASGI
route and the native server's fast path), so no transport or backend skips one:

1. the browser ``Origin`` (``OriginRefused``, a 403 or a refused handshake);
2. how many channels a request names (``max_channels_per_connection``);
3. the token (``Unauthorized``), after fetching a signing key not known yet;
4. permission for each channel; on a WebSocket, each ``subscribe`` against what the
   connection holds;
5. placement: a channel owned by another node is ``ChannelMoved``;
6. draining: a node that is stopping takes no new stream, poll or connection;
7. the node's connection limit, and its smaller allowance of WebSockets that have not
   authenticated yet (``admit_session``; kept by ``hub.sessions``).

A refusal is an exception (a ``RequestError``); each transport turns it into its
answer with ``http_refusal`` or ``websocket_refusal``/``websocket_close``, which log it
once (``Refusals``) and translate it with the one table of its kind
(``http.request_error_parts``, ``close_codes``). A command over a WebSocket's rate is
answered through the same path (``RateLimited``). The native poll door never answers a
refusal itself: it hands the request to the ASGI door, which answers and logs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, Literal

from tidings.core.admission import check_channels, check_placement, check_subscription
from tidings.core.channel import ChannelName
from tidings.core.namespace import NamespaceOptions
from tidings.core.origin import OriginAccess, origin_access
from tidings.core.permission import Credentials
from tidings.core.resume import check_channel_count
from tidings.errors import OriginRefused, RequestError, Unavailable
from tidings.hub.sessions import Session
from tidings.transports.close_codes import WebSocketClose, close_of, error_reply
from tidings.transports.context import TransportContext
from tidings.transports.http import request_error_parts
from tidings.transports.refusals import Peer

TransportKind = Literal["websocket", "sse", "poll"]
# What a draining node tells each kind of client (a WebSocket: closed with 4503).
_DRAINING: Final[dict[TransportKind, str]] = {
    "websocket": "server draining",
    "sse": "this node is draining; reconnect to another",
    "poll": "this node is draining; poll another",
}


class Admission:
    """Admits clients to one node's transports (see the module docstring)."""

    __slots__ = ("_context",)

    def __init__(self, context: TransportContext) -> None:
        self._context = context

    # -- the checks, in order -------------------------------------------------------

    def check_origin(self, origin: str | None, host: str | None, scheme: str) -> OriginAccess:
        """Return how a request's ``Origin`` is admitted (whether its cookies count).

        Raises:
            OriginRefused: the origin is not in ``allowed_origins``.
        """
        access = origin_access(origin, host, scheme, self._context.allowed_origins)
        if not access.is_allowed:
            raise OriginRefused(origin)
        return access

    async def authenticate(self, token: str | None) -> Credentials:
        """Verify ``token`` (``None``: anonymous), first fetching a JWKS key it names that
        is not known yet (the issuer rotated its keys).

        Raises:
            Unauthorized: the token is refused, or missing where one is required.
        """
        authenticator = self._context.authenticator
        pending = authenticator.pending_keys(token)
        if pending is not None:
            await pending
        return authenticator.authenticate(token)

    def admit_connection(self) -> None:
        """Admit a WebSocket connection whose handshake passed.

        Raises:
            Unavailable: the node is draining.
        """
        if self._context.draining:
            raise Unavailable(_DRAINING["websocket"])

    def admit_session(self, session: Session, *, authenticated: bool = True) -> None:
        """Register a WebSocket or an SSE stream among the node's sessions.

        Raises:
            TooManyRequests: the node holds ``max_connections`` sessions already, or (for
                one not ``authenticated`` yet) its unauthenticated allowance is full.
        """
        self._context.sessions.add(session, authenticated=authenticated)

    def admit_subscribe(
        self, channel: ChannelName, credentials: Credentials, held: set[ChannelName]
    ) -> NamespaceOptions:
        """Admit a WebSocket ``subscribe`` to ``channel`` on a connection holding ``held``;
        return the channel's namespace options.

        Raises:
            PermissionDenied, BadRequest, TooManyRequests: see
                ``core.admission.check_subscription``.
            ChannelMoved: another node serves ``channel``.
        """
        context = self._context
        options = context.namespaces.options_for(channel)
        limit = context.limits.max_channels_per_connection
        check_subscription(channel, credentials, options, held=held, limit=limit)
        check_placement((channel,), context.placement)
        return options

    def admit_here(self, channel: ChannelName) -> None:
        """Admit a WebSocket ``publish``, ``history`` or ``presence`` of ``channel`` on
        this node: only its owner sequences it and keeps its history (a client may
        publish only where it could subscribe).

        Raises:
            ChannelMoved: another node serves ``channel``.
        """
        check_placement((channel,), self._context.placement)

    def check_channel_count(self, channels: Sequence[ChannelName]) -> None:
        """Refuse a stream or poll naming more channels than a connection may hold
        (before its token is looked at: such a request is refused whoever sends it).

        Raises:
            BadRequest: too many channels.
        """
        check_channel_count(len(channels), self._context.limits.max_channels_per_connection)

    def admit_request_now(
        self, kind: TransportKind, channels: Sequence[ChannelName], token: str | None
    ) -> Credentials:
        """Admit a stream or a poll of ``channels`` without waiting: the native poll
        door's check (a token whose key must be fetched first is refused here; the ASGI
        door then waits for it: ``admit_request``). Returns the request's credentials.

        Raises:
            BadRequest: too many channels.
            Unauthorized: the token is refused (or its key is not known yet).
            PermissionDenied: a channel is not allowed.
            ChannelMoved: a channel is served by another node.
            Unavailable: the node is draining.
        """
        context = self._context
        self.check_channel_count(channels)
        credentials = context.authenticator.authenticate(token)
        self._admit_channels(kind, channels, credentials)
        return credentials

    async def admit_request(
        self, kind: TransportKind, channels: Sequence[ChannelName], token: str | None
    ) -> Credentials:
        """Admit a stream or a poll of ``channels``, fetching a signing key first if the
        token needs one; raises as ``admit_request_now``."""
        self.check_channel_count(channels)
        credentials = await self.authenticate(token)
        self._admit_channels(kind, channels, credentials)
        return credentials

    def _admit_channels(
        self, kind: TransportKind, channels: Sequence[ChannelName], credentials: Credentials
    ) -> None:
        context = self._context
        check_channels(channels, credentials, context.namespaces)
        check_placement(channels, context.placement)
        if context.draining:
            raise Unavailable(_DRAINING[kind])

    # -- refusals: logged once, translated by one table per transport kind -----------

    def http_refusal(
        self, error: RequestError, peer: Peer, target: str
    ) -> tuple[int, dict[str, str], bytes]:
        """Log ``error`` if it is a refusal; return its HTTP status, headers and body.

        ``target``: the request's path and query, for a ``307`` to the owner.
        """
        self._context.refusals.refused_request(error, peer)
        return request_error_parts(error, target)

    def websocket_refusal(self, command_id: int, error: RequestError, peer: Peer) -> str:
        """Log ``error`` if it is a refusal; return the failed command's reply."""
        self._context.refusals.refused_request(error, peer)
        return error_reply(command_id, error)

    def websocket_close(self, error: RequestError, peer: Peer) -> WebSocketClose:
        """Log ``error`` if it is a refusal; return how it ends the connection."""
        self._context.refusals.refused_request(error, peer)
        return close_of(error)
