"""The server API (docs/protocol.md §6): the application's backend publishes and manages here.

HTTP I/O through Starlette. Bodies are decoded once into typed structs; every error
becomes one JSON error body through ``http_errors``.

Admission is one function, ``admit_api_request``, for the Starlette routes and the
native server's ``POST /api/publish`` alike. With an ``api_key`` the key is the door.
Without one (the API is open, for a node on loopback), a web page must still not be
able to use the API through its visitor's browser: a cross-site request is refused
(``Origin``, ``Sec-Fetch-Site``), and so is a ``Host`` that is not a loopback name,
which is what a DNS-rebound page sends. Every POST must say ``Content-Type:
application/json``, key or not: a page can send ``text/plain`` cross-site without a
preflight but not JSON, and a client that works against an open node then works
unchanged against a keyed one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tidings.brokers.base import DisconnectUser, NodeControl, PublishResult
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.commands import (
    MAX_HISTORY_LIMIT,
    MAX_KEY_LENGTH,
    IdempotencyKey,
    publication_data,
)
from tidings.core.node_call import NodeCall, canonical_target
from tidings.core.origin import is_cross_site, is_loopback_host
from tidings.core.publication import ClientInfo, Position, parse_position_text
from tidings.core.recovery import Replay
from tidings.core.wire import encode_json, position_fields, publication_frames
from tidings.errors import (
    BadRequest,
    BrokerError,
    PermissionDenied,
    RequestError,
    Unauthorized,
    Unavailable,
)
from tidings.hub.sessions import SessionRegistry
from tidings.server.auth import api_key_refusal
from tidings.server.forwarding import OwnerLink, Parts
from tidings.server.hot_channels import MAX_HOT_CHANNELS_TOP, rate_fields
from tidings.transports.close_codes import is_reconnectable
from tidings.transports.context import TransportContext
from tidings.transports.http import (
    INTERNAL_ERROR_MESSAGE,
    bearer_token,
    decode_json_body,
    error_parts,
    internal_error_response,
    json_response,
    query_int,
    read_body,
    request_error_response,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

MAX_BROADCAST_CHANNELS: Final = 1000
MAX_BODY_BYTES_OVERHEAD: Final = 64 * 1024


# The client id and user of ``info`` (docs/protocol.md §6): as long as a key, at most.
InfoText = Annotated[str, msgspec.Meta(max_length=MAX_KEY_LENGTH)]


class PublishInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``info`` of ``POST /api/publish``: the client a relay publishes for (§10)."""

    client: InfoText
    user: InfoText


class PublishBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """``POST /api/publish``."""

    channel: str
    data: msgspec.Raw
    key: IdempotencyKey | None = None
    info: PublishInfo | None = None


class _PositionAnswer(msgspec.Struct, frozen=True):
    """``{"epoch", "offset"[, "duplicate"]}``, as an owner answers a publish."""

    epoch: str
    offset: int
    duplicate: bool = False

    @property
    def result(self) -> PublishResult:
        return PublishResult(Position(self.epoch, self.offset), self.duplicate)


class BroadcastBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/broadcast``."""

    channels: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_BROADCAST_CHANNELS)]
    data: msgspec.Raw
    key: IdempotencyKey | None = None


class DisconnectBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /api/disconnect``."""

    user: str
    code: Annotated[int, msgspec.Meta(ge=4000, le=4999)] = 4003
    reason: Annotated[str, msgspec.Meta(max_length=120)] = "disconnected by the application"


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class ApiCall:
    """A server API request admitted: its body read whole (empty for a GET), its
    path and query in the form a node signs (``core.node_call``), and the node call it
    is (``None``: the application's own)."""

    request: Request
    raw: bytes
    target: str
    call: NodeCall | None

    def forwarded(self, method: str) -> tuple[str, str, bytes]:
        """The request as it is forwarded to an owner: method, path and query, body."""
        return method, self.target, self.raw


ApiHandler = Callable[[ApiCall], Awaitable[Response]]
# A request header by lower-case name, as the native server looks it up.
NativeHeader = Callable[[bytes], bytes | None]
# ``publish_native``: headers, whole body and peer address in; status, headers, body out.
NativePublish = Callable[
    [NativeHeader, bytes, tuple[str, int] | None], Awaitable[tuple[int, dict[str, str], bytes]]
]

JSON_MEDIA_TYPE: Final = "application/json"
PUBLISH_PATH: Final = "/api/publish"


# A request header by lower-case name, as admission reads it.
HeaderLookup = Callable[[str], str | None]


def native_header_lookup(header: NativeHeader) -> HeaderLookup:
    """Read the native server's byte headers as text (latin-1, as HTTP has it)."""

    def text(name: str) -> str | None:
        value = header(name.encode("ascii"))
        return None if value is None else value.decode("latin-1")

    return text


def admit_api_request(
    method: str,
    header: HeaderLookup,
    scheme: str,
    api_key: str | None,
    *,
    from_node: bool = False,
) -> None:
    """Let a server API request in, or raise why not (see the module docstring).

    Args:
        method: the request's method.
        header: looks up a request header by lower-case name.
        scheme: ``http`` or ``https``, for telling a same-origin ``Origin``.
        api_key: the ``api_key`` setting; ``None``, the API is open.
        from_node: the request is a call forwarded by another node of the ring, whose
            signature was verified (``core.node_call``): it needs no key.

    Raises:
        PermissionDenied: no ``api_key`` is set and the request comes from another
            site's page, or names a ``Host`` that is not a loopback name.
        Unauthorized: the key is missing or wrong.
        BadRequest: a POST whose ``Content-Type`` is not ``application/json``.
    """
    if not from_node:  # a node's call is signed with the cluster_secret: its door
        _admit_client(header, scheme, api_key)
    if method == "POST":
        content_type = header("content-type")
        if not _is_json(content_type):
            raise BadRequest(
                f"the server API takes JSON bodies: send Content-Type: {JSON_MEDIA_TYPE}, "
                f"got {content_type or 'none'}"
            )


def _admit_client(header: HeaderLookup, scheme: str, api_key: str | None) -> None:
    """The application's door: its ``api_key``, or, with none, its page and host."""
    if api_key is None:
        host = header("host")
        if is_cross_site(header("origin"), header("sec-fetch-site"), host, scheme):
            raise PermissionDenied(
                "the server API has no api_key set and refuses requests from web pages of "
                "other sites; call it from the backend, or set api_key"
            )
        if not is_loopback_host(host):
            raise PermissionDenied(
                "the server API has no api_key set and answers only requests to a loopback "
                "Host (127.0.0.1, localhost, [::1]); set api_key to call it by another name"
            )
    refusal = api_key_refusal(api_key, bearer_token(header("authorization")))
    if refusal is not None:
        raise Unauthorized(refusal)


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").partition(";")[0].strip().lower()
    return media_type == JSON_MEDIA_TYPE


class ServerApi:
    """The handlers of the server API, bound to one node's context. In the
    consistent-hashing mode a call about a channel owned elsewhere is answered by its
    owner, through ``link`` (``server.forwarding``)."""

    def __init__(
        self,
        context: TransportContext,
        api_key: str | None,
        control: NodeControl,
        link: OwnerLink | None = None,
    ) -> None:
        self._context = context
        self._api_key = api_key
        self._control = control
        self._link = link or OwnerLink(context.placement, None)
        self._max_body = (
            max(options.max_data_bytes for _, options in context.namespaces.items())
            + MAX_BODY_BYTES_OVERHEAD
        )

    def routes(self) -> list[Route]:
        """Return the API routes."""
        handlers: list[tuple[str, ApiHandler, str]] = [
            (PUBLISH_PATH, self.publish, "POST"),
            ("/api/broadcast", self.broadcast, "POST"),
            ("/api/history", self.history, "GET"),
            ("/api/presence", self.presence, "GET"),
            ("/api/channels", self.channels, "GET"),
            ("/api/disconnect", self.disconnect, "POST"),
        ]
        return [
            Route(path, self._guard(path, handler), methods=[method])
            for path, handler, method in handlers
        ]

    def _guard(self, path: str, handler: ApiHandler) -> Handler:
        """Read the body, check the API key (or a node's signature) and translate
        errors, once for every handler. ``path`` is the route's own (``/api/history``),
        whatever the application is mounted under: what a node forwards and signs."""

        async def guarded(request: Request) -> Response:
            try:
                raw = await read_body(request, self._max_body) if request.method == "POST" else b""
                target = canonical_target(
                    path, request.scope.get("query_string", b"").decode("latin-1")
                )
                call = self._link.verify(request.headers.get, request.method, target, raw)
                admit_api_request(
                    request.method,
                    request.headers.get,
                    request.url.scheme,
                    self._api_key,
                    from_node=call is not None,
                )
                return await handler(ApiCall(request, raw, target, call))
            except RequestError as error:
                self._context.refusals.refused_request(error, request.scope.get("client"), api=True)
                return request_error_response(error)
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return internal_error_response()

        return guarded

    def _checked_data(self, channel: ChannelName, data: msgspec.Raw) -> bytes:
        limit = self._context.namespaces.options_for(channel).max_data_bytes
        return publication_data(bytes(data), limit)

    async def publish(self, api: ApiCall) -> Response:
        """``POST /api/publish`` → ``{"epoch", "offset"}``."""
        return _response(await self._publish_parts(api.raw, api.call))

    async def publish_native(
        self, header: NativeHeader, raw: bytes, peer: tuple[str, int] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """``POST /api/publish`` as tidings' native server hands it over (its headers and
        whole body, no Starlette): the same admission and the same answers, as status,
        headers, body."""
        try:
            lookup = native_header_lookup(header)
            call = self._link.verify(lookup, "POST", PUBLISH_PATH, raw)
            admit_api_request("POST", lookup, "http", self._api_key, from_node=call is not None)
            return await self._publish_parts(raw, call)
        except RequestError as error:
            self._context.refusals.refused_request(error, peer, api=True)
            return error_parts(error.code, error.message)
        except Exception:
            logger.exception("POST /api/publish failed")
            return error_parts("internal", INTERNAL_ERROR_MESSAGE)

    async def _publish_parts(self, raw: bytes, call: NodeCall | None) -> Parts:
        """Publish here if this node owns the channel, else on its owner."""
        body = decode_json_body(raw, PublishBody, self._max_body)
        channel = parse_channel(body.channel)
        data = self._checked_data(channel, body.data)
        given = body.info
        info = None if given is None else ClientInfo(given.client, given.user)

        async def here() -> Parts:
            result = await self._context.hub.publish(channel, data, key=body.key, info=info)
            return 200, {"content-type": JSON_MEDIA_TYPE}, encode_json(_publish_fields(result))

        return await self._link.serve(channel, call, ("POST", PUBLISH_PATH, raw), here)

    async def publish_from_process(
        self, channel: ChannelName, data: bytes, key: str | None
    ) -> PublishResult:
        """Publish for the node's own process (an embedding application's
        ``TidingsApp.publish``, a source): here, or on the channel's owner, as
        ``POST /api/publish`` would.

        Raises:
            Unavailable: the owner cannot be reached, or refused the call (its message).
        """
        raw = encode_json(PublishBody(channel, msgspec.Raw(data), key))
        status, _, answer = await self._publish_parts(raw, None)
        if status != 200:
            raise Unavailable(f"the owner of {channel} answered {status}: {answer[:200]!r}")
        return msgspec.json.decode(answer, type=_PositionAnswer).result

    async def broadcast(self, api: ApiCall) -> Response:
        """``POST /api/broadcast`` → ``{"results": [{"channel", "epoch", "offset"}]}``;
        each channel published on its owner. The first publish that fails answers for
        the whole call (the channels before it stay published)."""
        body = decode_json_body(api.raw, BroadcastBody, self._max_body)
        channels = [parse_channel(channel) for channel in body.channels]
        checked = [(channel, self._checked_data(channel, body.data)) for channel in channels]
        results = []
        for channel, _ in checked:
            one = encode_json(PublishBody(channel, body.data, body.key))
            status, headers, answer = await self._publish_parts(one, api.call)
            if status != 200:
                return Response(answer, status, headers)
            results.append({"channel": channel, **msgspec.json.decode(answer)})
        return json_response({"results": results})

    async def history(self, api: ApiCall) -> Response:
        """``GET /api/history?channel=&since_epoch=&since_offset=&limit=``."""
        query = api.request.query_params
        channel = parse_channel(query.get("channel"))
        since = _since(query.get("since_epoch"), query.get("since_offset"))
        limit = query_int(query.get("limit"), "limit", 0, MAX_HISTORY_LIMIT, default=None)

        async def here() -> Parts:
            read = await self._context.hub.history(channel, since, limit)
            recovery = read.recovery
            answer: dict[str, Any] = position_fields(read.head)
            answer["publications"] = (
                publication_frames(recovery.publications) if isinstance(recovery, Replay) else []
            )
            if since is not None:
                answer["recovered"] = isinstance(recovery, Replay)
            return 200, {"content-type": JSON_MEDIA_TYPE}, encode_json(answer)

        return _response(await self._link.serve(channel, api.call, api.forwarded("GET"), here))

    async def presence(self, api: ApiCall) -> Response:
        """``GET /api/presence?channel=`` → ``{"clients": {id: {"user"}}}``."""
        channel = parse_channel(api.request.query_params.get("channel"))
        if not self._context.namespaces.options_for(channel).presence:
            raise PermissionDenied(f"presence is off in the namespace of {channel}")

        async def here() -> Parts:
            clients = await self._context.hub.presence(channel)
            answer = {"clients": {c: {"user": u} for c, u in clients.items()}}
            return 200, {"content-type": JSON_MEDIA_TYPE}, encode_json(answer)

        return _response(await self._link.serve(channel, api.call, api.forwarded("GET"), here))

    async def channels(self, api: ApiCall) -> Response:
        """``GET /api/channels?prefix=`` → ``{"channels": {name: {"subscribers": n}}}``;
        with ``top=N``, this node's ``N`` busiest channels instead, busiest first, with
        their rates over the last window (docs/server-api.md)."""
        query = api.request.query_params
        hub = self._context.hub
        if "top" not in query:
            counts = hub.channels(query.get("prefix", ""))
            return json_response({"channels": {c: {"subscribers": n} for c, n in counts.items()}})
        heat = hub.heat
        if heat is None:
            raise BadRequest("hot channels are not tracked on this node (hot_channels = false)")
        top = query_int(query.get("top"), "top", 1, MAX_HOT_CHANNELS_TOP, default=1)
        counts = hub.channels()
        return json_response(
            {
                "channels": {
                    rate.channel: {"subscribers": counts.get(rate.channel, 0), **rate_fields(rate)}
                    for rate in heat.top(top or 1)
                }
            }
        )

    async def disconnect(self, api: ApiCall) -> Response:
        """``POST /api/disconnect`` → ``{"disconnected": n, "nodes": m}``: the user's
        connections on this node, closed now, and the nodes told to close theirs (this
        one included), which they do on their own time (docs/server-api.md)."""
        body = decode_json_body(api.raw, DisconnectBody, self._max_body)
        # Counted first: this node's part runs inside send_to_nodes, before it awaits.
        disconnected = len(self._context.sessions.of_user(body.user))
        try:
            nodes = await self._control.send_to_nodes(
                DisconnectUser(body.user, body.code, body.reason)
            )
        except BrokerError as exc:
            logger.warning("disconnecting %r on the other nodes failed: %s", body.user, exc)
            raise Unavailable(
                f"closed {disconnected} of the user's connections on this node, but the broker "
                "could not tell the other nodes; retry"
            ) from exc
        return json_response({"disconnected": disconnected, "nodes": nodes})


def disconnect_user(sessions: SessionRegistry, command: DisconnectUser) -> int:
    """Close ``command.user``'s sessions on this node (a node command's handler);
    return how many."""
    found = sessions.of_user(command.user)
    for session in found:
        session.disconnect(command.code, command.reason, reconnect=is_reconnectable(command.code))
    return len(found)


def _response(parts: Parts) -> Response:
    status, headers, body = parts
    return Response(body, status, headers)


def _publish_fields(result: PublishResult) -> dict[str, Any]:
    fields = position_fields(result.position)
    if result.duplicate:
        fields["duplicate"] = True  # docs/protocol.md §6: the key had been published
    return fields


def _since(epoch: str | None, offset: str | None) -> Position | None:
    if epoch is None and offset is None:
        return None
    if epoch is None or offset is None:
        raise BadRequest("give both since_epoch and since_offset, or neither")
    return parse_position_text(f"{epoch}:{offset}")
