"""A node's owner routing (docs/protocol.md §9): its placement from the settings, and
``GET /route``, which tells any client the base URL of a key's or channel's owner.

HTTP I/O through Starlette for ``/route``; building the placement is pure. A node with
``ring_nodes`` set routes by the ring (or modulo hashing) over those nodes, as node
``node_id``; a node without serves every channel itself, and ``/route`` names this
node's own advertised URL for every key.
"""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from tidings.core.channel import parse_channel
from tidings.core.placement import LOCAL_PLACEMENT, Placement
from tidings.core.ring import ownership_of
from tidings.core.routing import RingPlacement
from tidings.errors import BadRequest, RequestError
from tidings.server.config import Settings, check_ring
from tidings.transports.http import cors_headers, json_response, request_error_response

MAX_KEY_LENGTH: Final = 255


def placement_of(settings: Settings) -> Placement:
    """Return the placement ``settings`` describe: a ``RingPlacement`` over
    ``ring_nodes``, or ``LOCAL_PLACEMENT`` without them.

    Raises:
        ConfigError: ``ring_nodes`` does not name this node.
    """
    if not settings.ring_nodes:
        return LOCAL_PLACEMENT
    check_ring(settings)
    ownership = ownership_of(settings.placement, settings.ring_nodes, settings.ring_vnodes)
    return RingPlacement(
        ownership, settings.node_id, settings.ring_nodes, settings.namespace_table()
    )


class RouteEndpoint:
    """``GET /route?key=<key>`` or ``?channel=<name>``: ``{"url": "<owner base URL>"}``."""

    def __init__(self, placement: Placement, settings: Settings) -> None:
        self._ring = placement if isinstance(placement, RingPlacement) else None
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
