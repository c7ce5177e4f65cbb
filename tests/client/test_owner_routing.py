"""The client follows owner routing (docs/protocol.md §9) by itself, with its positions:
real ``tidings serve`` processes that share a static ring (``ring_nodes``), each serving
only the channels the ring gives it; a client given the other node is redirected (a
``moved`` reply on WebSocket, a ``307`` over SSE and polling) and resumes on the owner.

Each node has a memory broker of its own, as a ring's owner keeps its channels' history:
publications are made on the owner's server API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from tests.client.conftest import (
    API_KEY,
    POLL_INTERVAL_S,
    TRANSPORTS,
    fast_backoff,
    start_of,
    take,
    take_publications,
)
from tests.support.ring_nodes import RingPair, start_pair
from tests.support.served import served
from tidings.client import GapNotice, Subscription, TooManyRedirects, TransportName
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.transports.close_codes import CLOSE_MOVED


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RingPair]:
    """Two nodes that agree: both route by the ring."""
    pair = start_pair(tmp_path_factory.mktemp("ring"), {"a": "ring", "b": "ring"}, API_KEY)
    try:
        yield pair
    finally:
        pair.kill()


def subscription(
    url: str, *channels: str, transport: TransportName, **since: object
) -> Subscription:
    return Subscription(
        url,
        channels,
        transport=transport,
        since=since.get("since"),  # type: ignore[arg-type]  # positions, or None
        poll_interval_s=POLL_INTERVAL_S,
        backoff=fast_backoff(),
    )


def numbers(publications: list[Publication]) -> list[int]:
    return [json.loads(publication.data)["n"] for publication in publications]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_client_sent_to_another_node_resumes_on_the_owner(
    ring: RingPair, transport: TransportName
) -> None:
    channel = ring.channel(f"room:{transport}-", a="b", b="b")
    async with ring.api("b") as owner:
        since = await start_of(owner, channel)
        for n in range(2):  # published before the client comes: recovered from `since`
            await owner.publish(channel, {"n": n})
        async with subscription(ring.url("a"), channel, transport=transport, since=since) as sub:
            first = await take_publications(sub, 2)
            for n in range(2, 4):
                await owner.publish(channel, {"n": n})
            rest = await take_publications(sub, 2)
            positions = sub.positions
    assert numbers(first + rest) == [0, 1, 2, 3]
    assert positions[ChannelName(channel)].offset == since[channel].offset + 4


@pytest.mark.parametrize("transport", ["ws", "sse"])
async def test_channels_of_different_owners_are_each_served_by_their_own(
    ring: RingPair, transport: TransportName
) -> None:
    here = ring.channel(f"room:{transport}-here-", a="a", b="a")
    there = ring.channel(f"room:{transport}-there-", a="b", b="b")
    async with ring.api("a") as api_a, ring.api("b") as api_b:
        since = {**await start_of(api_a, here), **await start_of(api_b, there)}
        async with subscription(
            ring.url("a"), here, there, transport=transport, since=since
        ) as sub:
            await api_a.publish(here, {"n": 1})
            await api_b.publish(there, {"n": 2})
            got = await take_publications(sub, 2)
    assert sorted((str(p.channel), numbers([p])[0]) for p in got) == [(here, 1), (there, 2)]


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RingPair]:
    """Two nodes that disagree about owners: ``a`` routes by the ring, ``b`` by modulo."""
    pair = start_pair(tmp_path_factory.mktemp("disagree"), {"a": "ring", "b": "modulo"}, API_KEY)
    try:
        yield pair
    finally:
        pair.kill()


@pytest.mark.parametrize("transport", ["ws", "sse", "poll"])
async def test_nodes_that_send_a_channel_back_and_forth_stop_the_client_after_five(
    disagreeing: RingPair, transport: TransportName
) -> None:
    channel = disagreeing.channel("room:pingpong-", a="b", b="a")
    async with subscription(disagreeing.url("a"), channel, transport=transport) as sub:
        async with asyncio.timeout(15):
            with pytest.raises(TooManyRedirects, match="redirected 5 times in a row"):
                await anext(sub)


async def test_a_connection_whose_key_moved_reconnects_to_the_url_and_resumes(
    ring: RingPair,
) -> None:
    """A node that closes a connection with 4503 and the owner's URL (docs/protocol.md §9):
    the client resumes there from the position it held."""
    channel = ring.channel("room:moving-", a="b", b="b")
    leaving = TidingsApp(Settings(shutdown_timeout_s=1.0))
    async with served(leaving) as leaving_url, ring.api("b") as owner:
        old = await leaving.publish(channel, {"n": 0})
        await owner.publish(channel, {"n": 1})  # the owner's history: another epoch
        async with subscription(
            leaving_url, channel, transport="ws", since={channel: Position(old.epoch, 0)}
        ) as sub:
            replayed = await take_publications(sub, 1)
            for session in list(leaving.sessions):
                session.disconnect(  # type: ignore[call-arg]  # Connection takes url
                    CLOSE_MOVED, "moved", reconnect=True, url=f"{ring.url('b')}/ws"
                )
            [gap] = await take(sub, 1)
            await owner.publish(channel, {"n": 2})
            moved = await take_publications(sub, 1)
    assert numbers(replayed) == [0]
    # Resumed with the position it held here: the owner had not that epoch, and says so.
    assert isinstance(gap, GapNotice)
    assert gap.since == old
    assert gap.position.offset == 1
    assert numbers(moved) == [2]
