"""A node's owner routing (docs/protocol.md §9): its placement from the settings, its
membership of the ring in etcd, and ``GET /route``, which tells any client the base URL
of a key's or channel's owner.

HTTP I/O through Starlette for ``/route``, and etcd's through ``RingMember``; building
the placement is pure. A node with ``ring_nodes`` set routes by that static ring (or
modulo hashing) over those nodes, as node ``node_id``; one with ``ring_etcd`` joins the
ring kept in etcd and routes by each version of it; a node with neither serves every
channel itself, and ``/route`` names this node's own advertised URL for every key.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.membership import DEFAULT_SETTLE_TIMEOUT_S, Membership
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.handover import RingRecord
from tidings.core.placement import LOCAL_PLACEMENT, Placement
from tidings.core.ring import ownership_of
from tidings.core.ring_gains import gained_channels
from tidings.core.routing import FollowingPlacement, OwnerRouting, RingPlacement
from tidings.errors import BadRequest, RequestError
from tidings.server.handover import Handover
from tidings.server.ring_settings import check_ring
from tidings.server.settings import Settings
from tidings.transports.http import cors_headers, json_response, request_error_response

logger = logging.getLogger(__name__)

MAX_KEY_LENGTH: Final = 255


def placement_of(settings: Settings) -> Placement:
    """Return the placement ``settings`` describe: a ``RingPlacement`` over
    ``ring_nodes``, a ``FollowingPlacement`` of the ring in etcd (``ring_etcd``; fed by
    ``RingMember``), or ``LOCAL_PLACEMENT`` without either.

    Raises:
        ConfigError: ``ring_nodes`` does not name this node, or both are set.
    """
    check_ring(settings)
    if settings.ring_etcd is not None:
        return FollowingPlacement(
            settings.node_id,
            settings.advertised_url,
            settings.namespace_table(),
            kind=settings.placement,
            vnodes=settings.ring_vnodes,
        )
    if not settings.ring_nodes:
        return LOCAL_PLACEMENT
    ownership = ownership_of(settings.placement, settings.ring_nodes, settings.ring_vnodes)
    return RingPlacement(
        ownership, settings.node_id, settings.ring_nodes, settings.namespace_table()
    )


class RouteEndpoint:
    """``GET /route?key=<key>`` or ``?channel=<name>``: ``{"url": "<owner base URL>"}``."""

    def __init__(self, placement: Placement, settings: Settings) -> None:
        self._ring: OwnerRouting | None = (
            placement if isinstance(placement, RingPlacement | FollowingPlacement) else None
        )
        self._own_url = settings.advertised_url
        self._allowed_origins = settings.allowed_origins

    async def answer(self, request: Request) -> Response:
        """Answer the owner of the request's key or channel (400 if it names neither or
        both, a key of over 255 characters, or an invalid channel)."""
        cors = cors_headers(request.headers.get("origin"), self._allowed_origins)
        try:
            url = self._owner_url(
                request.query_params.getlist("key"), request.query_params.getlist("channel")
            )
        except RequestError as exc:
            response = request_error_response(exc)
            response.headers.update(cors)
            return response
        return json_response({"url": url}, headers=cors)

    def _owner_url(self, keys: list[str], channels: list[str]) -> str:
        if len(keys) + len(channels) != 1:
            raise BadRequest("give exactly one key or one channel")
        if keys:
            key = keys[0]
            if not 1 <= len(key) <= MAX_KEY_LENGTH:
                raise BadRequest(f"key must be 1 to {MAX_KEY_LENGTH} characters")
            return self._own_url if self._ring is None else self._ring.owner_url(key)
        channel = parse_channel(channels[0])
        return self._own_url if self._ring is None else self._ring.channel_owner_url(channel)


async def _nothing_to_renew() -> None:
    """A node with no store to renew when its lease is lost."""


class RingMember:
    """This node's membership of the ring in etcd (``ring_etcd``) for the node's
    lifecycle: join at start (or only register, with ``ring_join = false``), leave with
    hand-over when it drains. Each version of the ring reaches the node's ``Handover``
    (or, without one, the ``FollowingPlacement``), so admission and ``/route`` follow it
    at once, then ``on_change`` (the mover of connections)."""

    def __init__(
        self,
        settings: Settings,
        placement: FollowingPlacement,
        on_change: Callable[[], None] | None = None,
        handover: Handover | None = None,
        *,
        on_lease_lost: Callable[[], Awaitable[None]] = _nothing_to_renew,
        on_gain: Callable[[Callable[[ChannelName], bool]], None] = lambda _gained: None,
    ) -> None:
        """Join as ``settings`` say; each new version of the ring reaches ``handover``
        (or ``placement``), then ``on_change`` (which moves the connections it sends
        away); ``on_lease_lost`` is awaited when etcd let this node's lease expire (others
        have sequenced its channels since), before it joins again. Without a
        ``handover``, ``on_gain`` is handed, in the same step as the new ring is taken,
        which channels it gives this node that the previous one gave another
        (``core.ring_gains``); a hand-over renews those itself."""
        assert settings.ring_etcd is not None  # the app makes one only then
        self._gateway = EtcdGateway(settings.ring_etcd)
        self._placement = placement
        self._on_change = on_change
        self._on_gain = on_gain
        self._handover = handover
        self._enter = settings.ring_join
        self._membership = Membership(
            self._gateway,
            settings.node_id,
            settings.advertised_url,
            prefix=settings.ring_prefix,
            ttl_s=math.ceil(settings.ring_ttl_s),
            on_ring=self._on_ring,
            on_lease_lost=on_lease_lost,
            hand_over=handover.hand_over if handover is not None else _nothing_to_hand,
            settle_timeout_s=max(DEFAULT_SETTLE_TIMEOUT_S, 3 * settings.handover_timeout_s),
        )
        if handover is not None:
            handover.refresh_ring = self.refresh
        self._joined = False

    def is_confirmed(self) -> bool:
        """Whether this node's lease surely lives now (``core.lease_deadline``): it may
        sequence the channels it owns."""
        return self._membership.is_confirmed()

    def unreachable_since(self) -> float | None:
        """Since when (Unix seconds) etcd has not answered this node's keep-alives, or
        ``None`` while it answers."""
        since = self._membership.lease.unreachable_since_s
        if since is None:
            return None
        return time.time() - (time.monotonic() - since)

    def _on_ring(self, state: RingRecord) -> None:
        if self._handover is not None:
            self._handover.receive_ring(state)
        else:
            before = self._placement.transition
            self._placement.receive_ring(state.nodes, state.version, state.previous)
            # No await between: nothing is sequenced under the new ring before this.
            self._on_gain(
                gained_channels(
                    before,
                    self._placement.transition,
                    self._placement.node_id,
                    self._placement.key_of,
                )
            )
        moving = "" if state.previous is None else f" (from {', '.join(sorted(state.previous))})"
        logger.info("ring version %d: %s%s", state.version, ", ".join(sorted(state.nodes)), moving)
        if self._on_change is not None:
            self._on_change()

    async def join(self) -> None:
        """Join the ring (or, with ``ring_join = false``, only become a member).

        Raises:
            EtcdError: etcd could not be reached.
        """
        await self._membership.join(enter=self._enter)
        self._joined = True

    async def refresh(self) -> None:
        """Read the ring in etcd now: a node that forwarded a call refused as made with
        an old ring retries with the latest (``server.forwarding``).

        Raises:
            EtcdError: etcd could not be reached.
        """
        await self._membership.refresh()

    async def leave(self) -> None:
        """Leave the ring (idempotent), handing this node's keys over to the others."""
        if self._joined:
            self._joined = False
            await self._membership.leave()

    async def close(self) -> None:
        """Leave, and close the connections to etcd."""
        await self.leave()
        await self._gateway.aclose()


async def _nothing_to_hand(_ring: RingRecord) -> None:
    """A node without a store to hand over (an embedding application's broker)."""
