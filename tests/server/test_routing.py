"""A node's owner routing (server/routing.py): the placement its settings describe, and
``GET /route`` read by pages of allowed origins."""

from __future__ import annotations

import httpx

from tidings.core.placement import LOCAL_PLACEMENT
from tidings.core.routing import FollowingPlacement, RingPlacement
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.routing import placement_of

RING = {"a": "http://a.example:8000", "b": "http://b.example:8000"}


def test_the_settings_choose_no_ring_a_static_ring_or_the_ring_in_etcd() -> None:
    assert placement_of(Settings()) is LOCAL_PLACEMENT
    assert isinstance(placement_of(Settings(node_id="a", ring_nodes=RING)), RingPlacement)
    following = placement_of(Settings(node_id="a", ring_etcd="http://127.0.0.1:2379"))
    assert isinstance(following, FollowingPlacement)


async def test_route_answers_pages_of_allowed_origins_only() -> None:
    app = TidingsApp(
        Settings(node_id="a", ring_nodes=RING, allowed_origins=("https://app.example",))
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://a.example:8000") as client:
        allowed = await client.get(
            "/route", params={"key": "k"}, headers={"origin": "https://app.example"}
        )
        other = await client.get(
            "/route", params={"key": "k"}, headers={"origin": "https://evil.example"}
        )
    await app.stop()
    assert allowed.json()["url"] in RING.values()
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
