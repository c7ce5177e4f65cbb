"""The tidings ASGI application: routes, lifecycle, broker choice and graceful drain.

Embeddable: mount a ``TidingsApp`` in any Starlette or FastAPI application (it starts
on its first request if its lifespan is not run, or pass ``app.lifespan`` to the host
application to start it with the host). ``tidings serve`` runs it under uvicorn and
calls ``drain`` on SIGTERM/SIGINT before uvicorn closes connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, Router, WebSocketRoute
from starlette.types import Receive, Scope, Send

from tidings.brokers.base import (
    Broker,
    NodeCommand,
    NodeControl,
    PresenceStore,
    PublishResult,
)
from tidings.brokers.factory import create_broker
from tidings.brokers.memory import LocalNodeControl, presence_store_of
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.commands import publication_data
from tidings.core.dedupe import CLIENT_KEY_MARK, DedupeOptions
from tidings.core.drain import plan_drain
from tidings.core.load import NodeLoad
from tidings.core.placement import Placement
from tidings.core.publication import Position
from tidings.core.routing import Destinations, FollowingPlacement
from tidings.core.wire import encode_json
from tidings.errors import BadRequest, TidingsError
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.server.api import NativePublish, ServerApi, disconnect_user
from tidings.server.auth import Authenticator
from tidings.server.demo import DemoBackend, prepare_demo
from tidings.server.forwarding import OwnerLink
from tidings.server.front import About, OriginCheckedStatic, front_page, health_response
from tidings.server.heartbeat import run_heartbeats
from tidings.server.hot_channels import HotChannelWindows, channel_heat_for
from tidings.server.key_hooks import KeyHooks
from tidings.server.key_ownership import KeyOwnership
from tidings.server.keys import JwksKeys, load_public_key
from tidings.server.load_agent import LoadAgent
from tidings.server.metrics import Metrics
from tidings.server.native.routes import NativeRoutes
from tidings.server.ring_fence import readiness
from tidings.server.ring_moves import RingMover
from tidings.server.ring_node import NodeRing
from tidings.server.routing import RouteEndpoint, placement_of
from tidings.server.settings import Settings
from tidings.server.status import (
    StaticAssets,
    StatusPublisher,
    status_page,
    with_status_namespace,
)
from tidings.sources.registry import create_sources
from tidings.sources.runner import SourceRunner
from tidings.transports.close_codes import CLOSE_GOING_AWAY
from tidings.transports.context import Limits, TransportContext
from tidings.transports.http import error_response, json_response
from tidings.transports.poll import NativePoll, PollTransport
from tidings.transports.sse import SseTransport
from tidings.transports.websocket import WebSocketTransport

logger = logging.getLogger(__name__)

# The timer ticks often enough that a heartbeat is at most a second or so late.
HEARTBEAT_TICK_S: Final = 1.0
# /ready answers within this even if the broker's own probe hangs: a broker that does
# not answer in time is not ready (brokers probe with a shorter time-out of their own).
READY_TIMEOUT_S: Final = 1.5
# A draining node with an agent port waits up to this for HAProxy to hear "drain" before
# it moves its clients (HAProxy's agent-inter is 2 s unless configured).
AGENT_DRAIN_WAIT_S: Final = 3.0


def broker_for(settings: Settings) -> Broker:
    """Return the broker the settings name: sqlite with ``data``, else memory."""
    dedupe = DedupeOptions(window_ms=int(settings.dedupe_window_s * 1000))
    return create_broker(
        settings.broker,
        settings.data,
        settings.namespace_table(),
        dedupe,
        publish_timeout_s=settings.publish_timeout_s,
        sqlite_durability=settings.sqlite_durability,
        node_id=settings.node_id,
        options=settings.brokers,
    )


def authenticator_for(settings: Settings, jwks: JwksKeys | None) -> Authenticator:
    """Return the token verifier the settings describe (keys: ``server/keys.py``)."""
    path = settings.jwt_public_key
    return Authenticator(
        settings.jwt_secret,
        public_key=None if path is None else load_public_key(path),
        jwks=jwks,
        require_exp=settings.jwt_require_exp,
    )


class TidingsApp:
    """A tidings node as an ASGI application."""

    def __init__(
        self,
        settings: Settings | None = None,
        broker: Broker | None = None,
        presence: PresenceStore | None = None,
        *,
        placement: Placement | None = None,
        key_hooks: KeyHooks | None = None,
    ) -> None:
        """Make a node of ``settings``, on ``broker`` (the one the settings name if
        ``None``), keeping presence in ``presence`` (the broker's own store if ``None``,
        or, for a broker that keeps none, one for this node alone); ``placement`` says
        which channels it serves (the one ``ring_nodes`` describe if ``None``: all of
        them, but in hashing mode); ``key_hooks`` tells an application's handler of the
        routing keys this node gains and loses (``server.key_ownership``)."""
        settings = settings or Settings()
        demo = prepare_demo(settings) if settings.demo else None
        self.settings = settings = with_status_namespace(demo.settings if demo else settings)
        placement = placement_of(settings) if placement is None else placement
        self.sessions = SessionRegistry(
            settings.max_connections, settings.max_unauthenticated_connections
        )
        following = placement if isinstance(placement, FollowingPlacement) else None
        # Connections whose channels a new ring gives to other nodes are sent there (in a
        # transition, those this node gives once their new owner holds them).
        self.ring_mover = RingMover(
            self.sessions,
            placement if following is None else Destinations(following),
            settings.namespace_table(),
            settings.ring_move_rate,
        )
        broker = broker or broker_for(settings)
        # The application's per-key state: its handler told of keys gained and lost.
        self.keys = KeyOwnership(placement, settings.namespace_table(), key_hooks)
        # The ring in etcd: membership, hand-over, and the broker the hub uses.
        self._ring = NodeRing(
            settings,
            placement,
            broker,
            lambda: self._owner_link,
            mover=self.ring_mover,
            keys=self.keys,
        )
        self._handover = self._ring.handover
        self._ring_member = self._ring.member
        # Metrics time the broker's calls by wrapping it; the hub never knows.
        self.metrics = Metrics(self.sessions)
        # Presence is the broker's own store (its connections), taken before metering
        # wraps the broker; one that keeps none serves this node alone.
        heat = channel_heat_for(settings)
        # Keys are gained before the broker serves them: the wait is not the broker's time.
        self.hub = Hub(
            self.keys.watched(self.metrics.metered(self._ring.broker)),
            presence or presence_store_of(broker),
            heat=heat,
            fence=self._ring.fence(),
        )
        self._hot_windows = (
            None if heat is None else HotChannelWindows(heat, settings.hot_channel_window_s)
        )
        self._hot_task: asyncio.Task[None] | None = None
        port = settings.agent_port
        self._agent = None if port is None else LoadAgent(self.load, settings.host, port)
        # Commands between nodes (``POST /api/disconnect``); a broker of an embedding
        # application that carries none serves this node alone.
        self.control: NodeControl = (
            broker if isinstance(broker, NodeControl) else LocalNodeControl()
        )
        self.metrics.read_counters_of(self.hub)
        url = settings.jwt_jwks_url
        self._jwks = None if url is None else JwksKeys(url, settings.jwt_jwks_refresh_s)
        self._jwks_task: asyncio.Task[None] | None = None
        self.context = TransportContext(
            hub=self.hub,
            sessions=self.sessions,
            authenticator=authenticator_for(settings, self._jwks),
            namespaces=settings.namespace_table(),
            limits=Limits(
                outbound_buffer_bytes=settings.outbound_buffer_bytes,
                max_frame_bytes=settings.max_frame_bytes,
                max_channels_per_connection=settings.max_channels_per_connection,
                command_rate=settings.command_rate,
                command_burst=settings.command_burst,
                connect_timeout_s=settings.connect_timeout_s,
            ),
            ping_interval_s=settings.ping_interval_s,
            allowed_origins=settings.allowed_origins,
            node_id=settings.node_id,
            placement=placement,
        )
        # Publications fed from outside (``[[sources]]``), run once the broker is started.
        self.sources = SourceRunner(
            create_sources(settings.sources), self._publish_checked, self.context.namespaces
        )
        self.control.listen(self._on_node_command)
        self.metrics.read_refusals_of(self.context.refusals)
        # Server API calls about channels owned elsewhere go to their owners.
        self._owner_link = OwnerLink(
            placement,
            settings.cluster_secret,
            None if self._ring_member is None else self._ring_member.refresh,
        )
        self.metrics.read_forwards_of(self._owner_link.forwarded)
        self._demo = DemoBackend(self.context, demo) if demo else None
        self._api = api = ServerApi(self.context, settings.api_key, self.control, self._owner_link)
        self._poll = PollTransport(self.context, self.metrics, max_watches=settings.poll_watches)
        self.about = About.of(settings, self.context.node_id)
        self.status = StatusPublisher(self.hub, self.metrics, self.context.node_id)
        # A transport left out of ``transports`` has no route: /ws refuses the
        # handshake (403), /sse and /poll answer 404, and clients fall back.
        transports: list[BaseRoute] = []
        # /ws bypasses the router (see __call__): a router's frames would stay on every
        # idle connection's stack. The route is kept for introspection and mounting.
        self._websocket = WebSocketTransport(self.context) if "ws" in settings.transports else None
        if self._websocket is not None:
            transports.append(WebSocketRoute("/ws", self._websocket))
        if "sse" in settings.transports:
            transports.append(Route("/sse", SseTransport(self.context), methods=["GET", "OPTIONS"]))
        if "poll" in settings.transports:
            transports.append(Route("/poll", self._poll.handle, methods=["GET", "OPTIONS"]))
        self._router = Router(
            routes=[
                *transports,
                Route("/health", self._health, methods=["GET"]),
                Route("/ready", self._ready, methods=["GET"]),
                Route("/load", self._load, methods=["GET"]),
                Route("/route", RouteEndpoint(placement, settings).answer, methods=["GET"]),
                Route("/metrics", self.metrics.endpoint, methods=["GET"]),
                Route("/", front_page(self.about), methods=["GET"]),
                Route("/status", status_page(self.status.channel, self.about), methods=["GET"]),
                Mount("/static", OriginCheckedStatic(StaticAssets(), settings.allowed_origins)),
                *api.routes(),
                *self._ring.routes(),
                *(self._demo.routes() if self._demo else []),
            ]
        )
        self._status_task: asyncio.Task[None] | None = None
        self._started = False
        self._start_lock = asyncio.Lock()
        self._heartbeat: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if not self._started:
            await self.start()
        if self._websocket is not None and scope["type"] == "websocket" and scope["path"] == "/ws":
            await self._websocket(scope, receive, send)
            return
        await self._router(scope, receive, send)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start the broker, the sources (each checked first) and the heartbeat timer;
        idempotent.

        Raises:
            ConfigError: a source's check failed (a missing table, column or topic).
        """
        async with self._start_lock:
            if self._started:
                return
            if self._agent is not None:
                await self._agent.start()
            await self.hub.start()
            try:
                if self._demo is not None:
                    await self._demo.start()  # its table, on PostgreSQL, before its source
                await self.sources.start()  # checks each first: a missing table stops here
            except BaseException:
                if self._demo is not None:
                    await self._demo.close()
                await self.hub.close()
                if self._agent is not None:
                    await self._agent.close()
                raise
            if self._ring_member is not None:
                await self._ring_member.join()
            await self.keys.start()
            tick_s = max(0.05, min(HEARTBEAT_TICK_S, self.settings.ping_interval_s / 4))
            self._heartbeat = asyncio.create_task(run_heartbeats(self.sessions, tick_s))
            self._status_task = asyncio.create_task(self.status.run())
            if self._hot_windows is not None:
                self._hot_task = asyncio.create_task(self._hot_windows.run())
            if self._jwks is not None:
                await self._jwks.refresh()  # tokens signed by the issuer verify at once
                self._jwks_task = asyncio.create_task(self._jwks.run())
            self._started = True
            if self._owner_link.is_forwarding_off:
                logger.warning(
                    "no cluster_secret is set: server API calls about channels this node "
                    "does not own are refused (503) instead of forwarded to their owners"
                )
            if self.settings.api_key is None:
                logger.warning(
                    "no api_key is set: the server API is open to callers on this machine "
                    "(loopback Host, not from other sites' pages)"
                )
            logger.info("tidings node %s started", self.context.node_id)

    async def drain(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down"
    ) -> None:
        """Tell every client to reconnect elsewhere, close them, and wait (bounded by
        ``shutdown_timeout``) until they are gone. New connections are refused from now on.

        The disconnects are spread over at most ``drain_window`` (half of
        ``shutdown_timeout`` at most, leaving the rest for goodbyes to flush), and each
        carries the delay that puts its client's reconnect in a slot of a schedule of
        at most ``drain_rate`` reconnects per second (``core.drain``).
        """
        self.context.draining = True
        if self._handover is None:
            # The drain closes every connection, at its own pace: no moves beside it.
            await self.ring_mover.close()
            # The application's state of every key is saved (``lost``) while this node
            # still owns them, before they go elsewhere (a hand-over saves the keys it
            # gives when it seals, before it says it handed them).
            await self.keys.release_all()
        if self._ring_member is not None:
            # Out of the ring first: its keys are handed over to the other nodes (its
            # clients moved there as they are), where the clients told to reconnect
            # below are sent.
            await self._ring_member.leave()
        # The drain closes every connection left, at its own pace: no moves beside it.
        await self.ring_mover.close()
        await self.keys.release_all()  # none is gained from now on
        self._poll.release_all()
        settings = self.settings
        if self._agent is not None:
            # Clients told to reconnect now must not be balanced back here: let HAProxy
            # hear "drain" first (its next agent check).
            wait_s = min(AGENT_DRAIN_WAIT_S, settings.shutdown_timeout_s / 2)
            if not await self._agent.wait_drain_heard(wait_s):
                logger.debug("draining before HAProxy's agent check heard it")
        loop = asyncio.get_running_loop()
        began = loop.time()
        window_s = min(settings.drain_window_s, settings.shutdown_timeout_s / 2)
        sessions = list(self.sessions)
        plan = plan_drain(len(sessions), int(window_s * 1000), settings.drain_rate)
        if sessions:
            logger.info("draining %d connections over %.1f s at most", len(sessions), window_s)
        for session, step in zip(sessions, plan, strict=True):
            now_ms = (loop.time() - began) * 1000
            if step.disconnect_at_ms > now_ms:
                await asyncio.sleep((step.disconnect_at_ms - now_ms) / 1000)
                now_ms = (loop.time() - began) * 1000
            session.disconnect(code, reason, reconnect=True, delay_ms=step.delay_ms(now_ms))
        left_s = max(0.0, began + settings.shutdown_timeout_s - loop.time())
        try:
            await asyncio.wait_for(self.sessions.wait_empty(), left_s)
        except TimeoutError:
            if self.sessions:  # the last may leave just as the time-out fires
                logger.warning(
                    "%d connections still open after the drain timeout", len(self.sessions)
                )

    async def stop(self) -> None:
        """Drain connections, stop the heartbeat and the sources, and close the broker;
        idempotent."""
        if not self._started:
            return
        await self.drain()
        if self._jwks is not None:
            await self._jwks.close()
        for task in (self._heartbeat, self._status_task, self._jwks_task, self._hot_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._poll.close()
        await self.sources.stop()
        if self._demo is not None:
            await self._demo.close()
        if self._agent is not None:
            await self._agent.close()
        if self._ring_member is not None:
            await self._ring_member.close()
        await self.ring_mover.close()
        await self.keys.close()
        await self._owner_link.aclose()
        await self.hub.close()
        self._started = False
        logger.info("tidings node %s stopped", self.context.node_id)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any = None) -> AsyncIterator[None]:
        """Start with the host application and stop with it (Starlette ``lifespan=``)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.start()
                except TidingsError as exc:  # a user's mistake: one line, no traceback
                    logger.error("startup failed: %s", exc)
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                except Exception as exc:
                    logger.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # -- for tidings' native server ---------------------------------------------------

    @property
    def native_poll(self) -> Callable[[NativePoll], None] | None:
        """Where the native server hands ``GET /poll`` first (``PollTransport.serve_native``),
        or ``None`` when polling is not served."""
        return self._poll.serve_native if "poll" in self.settings.transports else None

    @property
    def native_publish(self) -> NativePublish:
        """Where the native server hands ``POST /api/publish`` (``ServerApi.publish_native``):
        the request's headers and whole body in, status, headers and body out."""
        return self._api.publish_native

    @property
    def native_routes(self) -> NativeRoutes:
        """What the native server serves without Starlette (``native.routes``): polls
        at their door, runs of publishes in one task; the rest goes through the app."""
        poll = self.native_poll
        return NativeRoutes(
            doors={} if poll is None else {("GET", b"/poll"): poll},
            batched={("POST", b"/api/publish"): self.native_publish},
        )

    # -- in-process publishing (for embedding applications) ---------------------------

    async def publish(self, channel: str, data: object, *, key: str | None = None) -> Position:
        """Publish ``data`` (any JSON-serialisable value) in ``channel`` from this process
        (in the consistent-hashing mode, on the channel's owner).

        Returns:
            The publication's position (the original one for a repeated ``key``).

        Raises:
            BadRequest: the channel name is invalid, ``data`` is not JSON-serialisable or
                ``key`` holds a NUL (which marks clients' keys: ``core.dedupe``).
            MessageTooLarge: the encoded data is over the namespace's limit.
            Unavailable: the channel's owner cannot be reached (hashing mode).
        """
        name = parse_channel(channel)
        if key is not None and CLIENT_KEY_MARK in key:
            raise BadRequest("an idempotency key must not contain NUL")
        try:
            encoded = encode_json(data)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"data is not JSON-serialisable: {exc}") from None
        limit = self.context.namespaces.options_for(name).max_data_bytes
        data = publication_data(encoded, limit)
        return (await self._publish_checked(name, data, key)).position

    async def _publish_checked(
        self, channel: ChannelName, data: bytes, key: str | None
    ) -> PublishResult:
        """Publish checked ``data`` from this process (``publish``, a source): on this
        node, or on the channel's owner when a ring may place it elsewhere."""
        if self._owner_link.has_ring:  # the owner sequences: maybe another node
            return await self._api.publish_from_process(channel, data, key)
        return await self.hub.publish(channel, data, key=key)

    # -- commands from other nodes (and this one) ---------------------------------------

    def _on_node_command(self, command: NodeCommand) -> None:
        disconnected = disconnect_user(self.sessions, command)
        if disconnected:
            logger.info("disconnected %d connections of %r", disconnected, command.user)

    @property
    def hot_channels(self) -> HotChannelWindows | None:
        """The hot-channel windows of this node (``None``: ``hot_channels`` is off)."""
        return self._hot_windows

    # -- health and load ---------------------------------------------------------------

    def load(self) -> NodeLoad:
        """Return this node's load, as ``GET /load`` and the agent check report it."""
        return NodeLoad(len(self.sessions), self.settings.max_connections, self.context.draining)

    async def _load(self, _request: Request) -> Response:
        return json_response(self.load().fields())

    async def _health(self, request: Request) -> Response:
        return health_response(request, self.settings.allowed_origins)

    async def _ready(self, _request: Request) -> Response:
        if self.context.draining:
            return error_response("unavailable", "this node is draining")
        if self._ring_member is not None:
            not_ready = readiness(self._ring_member)
            if not_ready is not None:
                return error_response("unavailable", not_ready)
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                ready = await self.hub.broker.is_ready()
        except TimeoutError:
            ready = False
        if not ready:
            return error_response("unavailable", "the broker is not reachable")
        return json_response({"status": "ready"})


def create_app(settings: Settings | None = None) -> TidingsApp:
    """Return a tidings ASGI application configured by ``settings`` (defaults if ``None``)."""
    return TidingsApp(settings)
