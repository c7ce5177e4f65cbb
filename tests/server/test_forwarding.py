"""Forwarding to a channel's owner (server/forwarding.py), with the ring version as the
fencing token: an owner (a real node, served on a socket) refuses a call made with an
older ring than its own; the forwarding node reads the ring again and retries once,
serving the call itself if the new ring makes the channel its own; a call from a node
is never forwarded again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Final

import pytest

from tests.support.served import served
from tests.support.server import free_port
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.node_call import NodeCall
from tidings.core.ring import HashRing
from tidings.core.routing import FollowingPlacement
from tidings.errors import StaleRing, Unavailable
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.forwarding import OwnerLink, Parts

SECRET: Final = "a-cluster-secret-of-at-least-32-bytes"
A_URL: Final = "http://a.invalid:8000"  # never dialled: node a is the test itself
NAMESPACES: Final = Namespaces(Settings().namespaces)
CHANNEL: Final = ChannelName(
    next(c for c in (f"doc:{n}" for n in range(1000)) if HashRing(["a", "b"]).owner(c) == "b")
)
BODY: Final = b'{"channel":"%s","data":1}' % CHANNEL.encode()


@pytest.fixture
async def owner() -> AsyncIterator[tuple[str, TidingsApp]]:
    """Node ``b`` at ring version 2 (nodes ``a`` and ``b``)."""
    placement = FollowingPlacement("b", "http://b.invalid", NAMESPACES)
    app = TidingsApp(Settings(node_id="b", cluster_secret=SECRET), placement=placement)
    async with served(app) as url:
        placement.receive_ring({"a": A_URL, "b": url}, 2)
        yield url, app


def node_a(owner_url: str, version: int) -> FollowingPlacement:
    placement = FollowingPlacement("a", A_URL, NAMESPACES)
    placement.receive_ring({"a": A_URL, "b": owner_url}, version)
    return placement


async def not_here() -> Parts:
    raise AssertionError("served on node a, which does not own the channel")


async def test_a_call_made_with_an_old_ring_is_retried_with_the_ring_read_again(
    owner: tuple[str, TidingsApp],
) -> None:
    owner_url, owner_app = owner
    placement = node_a(owner_url, 1)
    reads: list[int] = []

    async def refresh() -> None:
        reads.append(2)
        placement.receive_ring({"a": A_URL, "b": owner_url}, 2)

    link = OwnerLink(placement, SECRET, refresh)
    try:
        status, _, body = await link.serve(CHANNEL, None, ("POST", "/api/publish", BODY), not_here)
    finally:
        await link.aclose()
    assert (status, reads) == (200, [2])
    assert b'"offset":1' in body
    assert (await owner_app.hub.history(CHANNEL, None, None)).head.offset == 1


async def test_a_call_still_refused_after_the_ring_is_read_again_is_unavailable(
    owner: tuple[str, TidingsApp],
) -> None:
    owner_url, owner_app = owner
    reads: list[int] = []

    async def refresh() -> None:
        reads.append(1)  # etcd still has version 1 here: this node's ring stays old

    link = OwnerLink(node_a(owner_url, 1), SECRET, refresh)
    try:
        with pytest.raises(Unavailable, match="refused this node's ring twice"):
            await link.serve(CHANNEL, None, ("POST", "/api/publish", BODY), not_here)
    finally:
        await link.aclose()
    assert reads == [1]
    # The owner sequenced nothing.
    assert (await owner_app.hub.history(CHANNEL, None, None)).head.offset == 0


async def test_a_call_whose_channel_the_ring_read_again_gives_to_this_node_is_served_here(
    owner: tuple[str, TidingsApp],
) -> None:
    owner_url, _ = owner
    placement = node_a(owner_url, 1)

    async def refresh() -> None:
        placement.receive_ring({"a": A_URL}, 3)  # b left: every channel is a's

    async def here() -> Parts:
        return 200, {}, b"here"

    link = OwnerLink(placement, SECRET, refresh)
    try:
        parts = await link.serve(CHANNEL, None, ("POST", "/api/publish", BODY), here)
    finally:
        await link.aclose()
    assert parts == (200, {}, b"here")


async def served_here() -> Parts:
    return 200, {}, b"here"


async def test_a_node_call_is_served_only_by_an_owner_whose_ring_is_not_newer() -> None:
    placement = FollowingPlacement("b", "http://b.invalid", NAMESPACES)
    placement.receive_ring({"a": A_URL, "b": "http://b.invalid"}, 5)
    link = OwnerLink(placement, SECRET)
    request = ("POST", "/api/publish", BODY)
    with pytest.raises(StaleRing, match="ring version 5; the call was made with version 4"):
        await link.serve(CHANNEL, NodeCall(4), request, served_here)
    assert await link.serve(CHANNEL, NodeCall(5), request, served_here) == (200, {}, b"here")
    # A caller with a newer ring that also gives b the channel: b still owns it.
    assert await link.serve(CHANNEL, NodeCall(6), request, served_here) == (200, {}, b"here")


async def test_a_ring_node_without_a_cluster_secret_refuses_rather_than_publishes() -> None:
    link = OwnerLink(node_a("http://b.invalid", 1), None)
    with pytest.raises(Unavailable, match="set the same cluster_secret"):
        await link.serve(CHANNEL, None, ("POST", "/api/publish", BODY), not_here)


async def test_an_embedding_application_publishes_on_the_owner(
    owner: tuple[str, TidingsApp],
) -> None:
    owner_url, owner_app = owner
    placement = node_a(owner_url, 2)
    app = TidingsApp(Settings(node_id="a", cluster_secret=SECRET), placement=placement)
    async with served(app):
        position = await app.publish(CHANNEL, {"n": 1}, key="k-1")
        again = await app.publish(CHANNEL, {"n": 1}, key="k-1")
    read = await owner_app.hub.history(CHANNEL, None, None)
    assert position == again == read.head
    assert read.head.offset == 1


async def test_calls_sent_to_owners_are_counted_by_outcome(
    owner: tuple[str, TidingsApp],
) -> None:
    owner_url, _ = owner
    placement = node_a(owner_url, 1)

    async def refresh() -> None:
        placement.receive_ring({"a": A_URL, "b": owner_url}, 2)

    link = OwnerLink(placement, SECRET, refresh)
    dead = OwnerLink(node_a(f"http://127.0.0.1:{free_port()}", 2), SECRET)  # nothing listens
    try:
        await link.serve(CHANNEL, None, ("POST", "/api/publish", BODY), not_here)
        with pytest.raises(Unavailable, match="cannot be reached"):
            await dead.serve(CHANNEL, None, ("POST", "/api/publish", BODY), not_here)
    finally:
        await link.aclose()
        await dead.aclose()
    assert link.forwarded == {"answered": 1, "stale_ring": 1, "unreachable": 0}
    assert dead.forwarded == {"answered": 0, "stale_ring": 0, "unreachable": 1}


async def test_an_owner_that_takes_the_call_and_never_answers_may_have_published() -> None:
    """Unlike an owner out of reach, one that took the call may have made it: the
    caller is told to retry with the same key."""
    accepted, finished = asyncio.Event(), asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set()
        try:
            await reader.read()  # until the caller gives up and closes
        finally:
            writer.close()
            await writer.wait_closed()
            finished.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = OwnerLink(node_a(f"http://127.0.0.1:{port}", 2), SECRET, timeout_s=0.2)
    try:
        with pytest.raises(Unavailable, match="may have been done; retry"):
            await link.serve(CHANNEL, None, ("POST", "/api/publish", BODY), not_here)
    finally:
        await link.aclose()
        if accepted.is_set():
            await asyncio.wait_for(finished.wait(), 5)
        server.close()
        await server.wait_closed()
    assert accepted.is_set()
