"""The chat demo of ``tidings serve --demo``: its settings and its small backend.

HTTP I/O through Starlette. **Demo only.** The page (static/demo.html) is plain HTML
and the JavaScript client; this module plays the application's backend it needs:

* ``POST /demo/token`` mints a short-lived HS256 connection token for any name the
  visitor types, signed with a secret generated for this process — only when the
  node has no ``jwt_secret`` of its own (then anyone may be anyone: a demo, not auth);
* ``POST /demo/publish``, ``GET /demo/history``, ``GET /demo/presence`` do for pages
  on SSE or polling what the WebSocket does by itself (those transports only receive);
* ``POST /demo/notify`` publishes into ``user:<name>``, the per-user channel only its
  owner may subscribe to (the page sends one for each ``@name`` of a message).

Each call carries the page's token (``Authorization: Bearer``) and is checked with the
same permission rules as a client connection. ``prepare_demo`` turns on, for the demo,
client publishing and presence in the ``room`` namespace.

On the PostgreSQL broker the rooms' messages are rows of a table instead
(``demo_table``): ``POST /demo/publish`` saves a row, a table source publishes it, and
``GET /demo/about`` tells the page to send through the backend on every transport.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import jwt
import msgspec
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from tidings.core.channel import DEFAULT_NAMESPACE, ChannelName, NamespaceName, parse_channel
from tidings.core.commands import MAX_HISTORY_LIMIT, IdempotencyKey, publication_data
from tidings.core.namespace import Policy
from tidings.core.permission import Credentials, check_publish, check_subscribe
from tidings.core.publication import ClientInfo
from tidings.core.recovery import Replay
from tidings.core.wire import encode_json, position_fields, publication_frames
from tidings.errors import (
    BadRequest,
    PermissionDenied,
    RequestError,
    Unauthorized,
    Unavailable,
)
from tidings.server.demo_table import MAX_TEXT_CHARS, DemoMessages, DemoTable, demo_table_of
from tidings.server.settings import Settings
from tidings.server.status import STATIC_DIR
from tidings.transports.context import TransportContext
from tidings.transports.http import (
    bearer_token,
    internal_error_response,
    json_response,
    query_int,
    read_json_body,
    request_error_response,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[Request], Awaitable[Response]]

ROOM_NAMESPACE: Final = NamespaceName("room")
USER_NAMESPACE: Final = NamespaceName("user")
DEMO_TOKEN_TTL_S: Final = 900
DEMO_HISTORY_LIMIT: Final = 50
# A name becomes the channel user:<name>, so it keeps to channel characters.
USER_NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
MAX_BODY_OVERHEAD_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class DemoSetup:
    """The node's settings for the demo, and whether it may mint tokens."""

    settings: Settings
    mints_tokens: bool
    table: DemoTable | None = None  # the messages table, on the PostgreSQL broker


def prepare_demo(settings: Settings) -> DemoSetup:
    """Return ``settings`` for the demo: rooms with client publishing and presence,
    per-user ``user`` channels, and a generated ``jwt_secret`` if none is configured."""
    namespaces = dict(settings.namespaces)
    room = namespaces.get(ROOM_NAMESPACE, namespaces[DEFAULT_NAMESPACE])
    namespaces[ROOM_NAMESPACE] = replace(room, client_publish=True, presence=True)
    user = namespaces.get(USER_NAMESPACE, namespaces[DEFAULT_NAMESPACE])
    namespaces[USER_NAMESPACE] = replace(user, policy=Policy.USER)
    mints_tokens = settings.jwt_secret is None
    secret = secrets.token_urlsafe(32) if mints_tokens else settings.jwt_secret
    table = demo_table_of(settings)
    sources = settings.sources if table is None else (*settings.sources, table.source_settings())
    prepared = replace(settings, namespaces=namespaces, jwt_secret=secret, sources=sources)
    return DemoSetup(prepared, mints_tokens, table)


class TokenBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /demo/token``."""

    name: str


class PublishBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /demo/publish``."""

    channel: str
    data: msgspec.Raw
    key: IdempotencyKey | None = None


class MessageData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A room message's data, as the page sends it (saved as a row on PostgreSQL)."""

    text: str


class NotifyBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``POST /demo/notify``."""

    to: str
    data: msgspec.Raw


class DemoBackend:
    """The demo's routes, bound to one node's context."""

    def __init__(self, context: TransportContext, setup: DemoSetup) -> None:
        self._context = context
        self._mints_tokens = setup.mints_tokens
        secret = setup.settings.jwt_secret
        assert secret is not None, "prepare_demo always leaves a secret"
        self._secret = secret
        if self._mints_tokens:
            logger.warning(
                "demo: POST /demo/token signs a connection token for any name (anyone may "
                "be anyone); do not expose this node"
            )
        self._messages = None if setup.table is None else DemoMessages(setup.table)
        self._max_body = (
            max(options.max_data_bytes for _, options in context.namespaces.items())
            + MAX_BODY_OVERHEAD_BYTES
        )

    def routes(self) -> list[Route]:
        """Return the demo's routes."""
        return [
            Route("/demo", self._page, methods=["GET"]),
            Route("/demo/about", self.about, methods=["GET"]),
            Route("/demo/token", self._guard(self.token), methods=["POST"]),
            Route("/demo/publish", self._guard(self.publish), methods=["POST"]),
            Route("/demo/history", self._guard(self.history), methods=["GET"]),
            Route("/demo/presence", self._guard(self.presence), methods=["GET"]),
            Route("/demo/notify", self._guard(self.notify), methods=["POST"]),
        ]

    async def start(self) -> None:
        """Set up the messages table, on PostgreSQL (before the sources start: the
        demo's source checks that its table exists).

        Raises:
            ConfigError: the table cannot be made.
        """
        if self._messages is not None:
            await self._messages.open()

    async def close(self) -> None:
        """Close the messages table's connections, if any."""
        if self._messages is not None:
            await self._messages.close()

    async def _page(self, _request: Request) -> Response:
        return FileResponse(STATIC_DIR / "demo.html", headers={"Cache-Control": "no-cache"})

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestError as error:
                return request_error_response(error)
            except Exception:
                logger.exception("%s %s failed", request.method, request.url.path)
                return internal_error_response()

        return guarded

    def _credentials(self, request: Request) -> Credentials:
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            raise Unauthorized("send the demo token as Authorization: Bearer <token>")
        return self._context.authenticator.authenticate(token)

    async def _body(self, request: Request, kind: type[T]) -> T:
        return await read_json_body(request, kind, self._max_body)

    def _data(self, channel: ChannelName, data: msgspec.Raw) -> bytes:
        limit = self._context.namespaces.options_for(channel).max_data_bytes
        return publication_data(bytes(data), limit)

    # -- handlers ------------------------------------------------------------------------

    async def token(self, request: Request) -> Response:
        """``POST /demo/token {"name"}`` → ``{"token", "user", "expires_in"}``."""
        if not self._mints_tokens:
            raise PermissionDenied(
                "this node has its own jwt_secret, so the demo does not mint tokens: "
                "open /demo?token=<a token your application signed>"
            )
        body = await self._body(request, TokenBody)
        if USER_NAME_PATTERN.fullmatch(body.name) is None:
            raise BadRequest("name must be 1-32 characters of A-Z a-z 0-9 _ -")
        now = int(time.time())
        claims = {"sub": body.name, "iat": now, "exp": now + DEMO_TOKEN_TTL_S}
        token = jwt.encode(claims, self._secret, algorithm="HS256")
        return json_response({"token": token, "user": body.name, "expires_in": DEMO_TOKEN_TTL_S})

    async def about(self, _request: Request) -> Response:
        """``GET /demo/about`` → where messages go: ``{"messages": "broker"}``, or
        ``{"messages": "table", "table"}`` (PostgreSQL: send every message here)."""
        if self._messages is None:
            return json_response({"messages": "broker"})
        return json_response({"messages": "table", "table": self._messages.table.table})

    async def publish(self, request: Request) -> Response:
        """``POST /demo/publish {"channel", "data", "key"?}`` → ``{"epoch", "offset"}``,
        or on PostgreSQL ``{"id", "duplicate"}`` (the row's; its source publishes it)."""
        credentials = self._credentials(request)
        body = await self._body(request, PublishBody)
        channel = parse_channel(body.channel)
        check_publish(channel, self._context.namespaces.options_for(channel), credentials)
        if self._messages is not None:
            return await self._save(channel, body, credentials.user)
        result = await self._context.hub.publish(
            channel,
            self._data(channel, body.data),
            key=body.key,
            info=ClientInfo("http", credentials.user),
        )
        return json_response(position_fields(result.position))

    async def _save(self, channel: ChannelName, body: PublishBody, user: str) -> Response:
        assert self._messages is not None
        try:
            message = msgspec.json.decode(bytes(body.data), type=MessageData)
        except msgspec.DecodeError:
            raise BadRequest(
                'on PostgreSQL the demo saves messages as rows: data must be {"text": "..."}'
            ) from None
        if not 0 < len(message.text) <= MAX_TEXT_CHARS:
            raise BadRequest(f"text must be 1 to {MAX_TEXT_CHARS} characters")
        prefix = f"{ROOM_NAMESPACE}:"
        if not channel.startswith(prefix):
            raise BadRequest(f"on PostgreSQL the demo saves messages of {prefix}* channels only")
        room = channel.removeprefix(prefix)
        try:
            row_id, duplicate = await self._messages.insert(room, user, message.text, body.key)
        except self._messages.errors as exc:
            logger.warning("demo: saving a message failed: %s", exc)
            raise Unavailable("the messages table cannot be written now; retry") from None
        return json_response({"id": row_id, "duplicate": duplicate})

    async def history(self, request: Request) -> Response:
        """``GET /demo/history?channel=&limit=`` → the latest publications, oldest first."""
        credentials = self._credentials(request)
        channel = parse_channel(request.query_params.get("channel"))
        check_subscribe(channel, self._context.namespaces.options_for(channel), credentials)
        limit = query_int(
            request.query_params.get("limit"), "limit", 0, MAX_HISTORY_LIMIT, default=None
        )
        read = await self._context.hub.history(channel, None, limit or DEMO_HISTORY_LIMIT)
        recovery = read.recovery
        answer: dict[str, Any] = position_fields(read.head)
        answer["publications"] = (
            publication_frames(recovery.publications) if isinstance(recovery, Replay) else []
        )
        return json_response(answer)

    async def presence(self, request: Request) -> Response:
        """``GET /demo/presence?channel=`` → ``{"clients": {id: {"user"}}}``."""
        credentials = self._credentials(request)
        channel = parse_channel(request.query_params.get("channel"))
        options = self._context.namespaces.options_for(channel)
        check_subscribe(channel, options, credentials)
        if not options.presence:
            raise PermissionDenied(f"presence is off in the namespace of {channel}")
        clients = await self._context.hub.presence(channel)
        return json_response({"clients": {c: {"user": u} for c, u in clients.items()}})

    async def notify(self, request: Request) -> Response:
        """``POST /demo/notify {"to", "data"}``: publish ``{"from", "data"}`` in ``user:<to>``."""
        credentials = self._credentials(request)
        if not credentials.user:
            raise Unauthorized("notifications need a named user")
        body = await self._body(request, NotifyBody)
        if USER_NAME_PATTERN.fullmatch(body.to) is None:
            raise BadRequest("to must be a user name: 1-32 characters of A-Z a-z 0-9 _ -")
        channel = ChannelName(f"{USER_NAMESPACE}:{body.to}")
        notification = b'{"from":' + encode_json(credentials.user) + b',"data":'
        data = self._data(channel, msgspec.Raw(notification + bytes(body.data) + b"}"))
        result = await self._context.hub.publish(channel, data)
        return json_response(position_fields(result.position))
