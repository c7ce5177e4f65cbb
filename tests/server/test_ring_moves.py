"""Moving connections (server/ring_moves.py) on a node served on a real socket: a new
ring sends each connection holding a channel that went elsewhere a ``disconnect`` 4503
with the owner's ``/ws`` URL, one after the other at the rate; a connection that let
go of such channels before its turn is left alone, as is one whose channels stay."""

from __future__ import annotations

import random
from typing import Final

from tests.support.served import served
from tests.support.ws import WsClient, ws_client
from tidings.core.channel import ChannelName
from tidings.core.ring import HashRing
from tidings.core.routing import FollowingPlacement
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.ring_moves import RingMover

B_URL: Final = "http://b.invalid:8000"
RING: Final = HashRing(["a", "b"])
# Connection k is told at k / rate seconds: the second one two seconds after the first.
RATE: Final = 0.5


class NoJitter(random.Random):
    def random(self) -> float:
        return 0.0


def owned_by(node: str, prefix: str) -> ChannelName:
    return ChannelName(
        next(c for c in (f"{prefix}{n}" for n in range(1000)) if RING.owner(c) == node)
    )


async def subscribed(ws: WsClient, channel: str) -> None:
    await ws.result("connect")
    await ws.result("subscribe", channel=channel)


async def test_a_new_ring_moves_each_connection_of_a_channel_gone_elsewhere_in_turn() -> None:
    settings = Settings(node_id="a")
    placement = FollowingPlacement("a", "http://a.invalid", settings.namespace_table())
    app = TidingsApp(settings, placement=placement)
    async with served(app) as url:
        placement.receive_ring({"a": url}, 1)
        mover = RingMover(
            app.sessions, placement, settings.namespace_table(), RATE, jitter=NoJitter()
        )
        ws_url = url.replace("http", "ws") + "/ws"
        async with (
            ws_client(ws_url) as first,
            ws_client(ws_url) as second,
            ws_client(ws_url) as staying,
        ):
            await subscribed(first, owned_by("b", "doc:first-"))
            await subscribed(second, owned_by("b", "doc:second-"))
            await subscribed(staying, owned_by("a", "doc:staying-"))

            placement.receive_ring({"a": url, "b": B_URL}, 2)
            mover.receive_ring()
            goodbye = await first.next_push()
            # Before its turn, the second lets go of the channel that moved.
            await second.result("unsubscribe", channel=owned_by("b", "doc:second-"))
            await mover.wait_moved()
            second_alive = await second.result("history", channel=owned_by("a", "doc:x-"))
            staying_alive = await staying.result("history", channel=owned_by("a", "doc:y-"))
            await mover.close()
    assert goodbye == {
        "push": "disconnect",
        "code": 4503,
        "reason": "the ring gave this connection's channels to another node",
        "reconnect": True,
        "url": "ws://b.invalid:8000/ws",
    }
    assert await first.wait_closed() == 4503
    assert "offset" in second_alive
    assert "offset" in staying_alive
