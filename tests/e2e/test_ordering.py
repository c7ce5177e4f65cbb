"""Order and no duplicates under load (docs/protocol.md §2.1, §2.2): every subscriber of a
channel receives offsets 1..N exactly once, in order, whoever publishes and however
concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Final

import pytest

from tests.e2e.conftest import CONFIG, api_client, serving
from tests.support.server import ServerProcess
from tests.support.ws import Frame, WsClient, ws_client

PUBLICATIONS: Final = 1000
BATCH: Final = 100
RECEIVE_TIMEOUT_S: Final = 30.0


@pytest.fixture(scope="module")
def unlimited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server whose command rate limit lets one connection publish 1,000 times at once
    (shared by this module's tests, each in its own channel)."""
    config = tmp_path_factory.mktemp("ordering") / "tidings.toml"
    config.write_text(CONFIG)
    env = {"TIDINGS_COMMAND_RATE": "100000", "TIDINGS_COMMAND_BURST": "100000"}
    with serving(config, env) as process:
        yield process


def sequence(publications: list[Frame]) -> list[tuple[int, Any]]:
    """The (offset, data) pairs a subscriber saw, in arrival order."""
    return [(publication["offset"], publication["data"]) for publication in publications]


async def receive_all(subscribers: list[WsClient]) -> list[list[Frame]]:
    """Every subscriber's next ``PUBLICATIONS`` publications."""
    return await asyncio.gather(
        *(client.publications(PUBLICATIONS, RECEIVE_TIMEOUT_S) for client in subscribers)
    )


def assert_gap_free_and_identical(received: list[list[Frame]], epoch: str) -> None:
    first = received[0]
    assert [publication["offset"] for publication in first] == list(range(1, PUBLICATIONS + 1))
    assert {publication["epoch"] for publication in first} == {epoch}
    assert sorted(publication["data"]["n"] for publication in first) == list(range(PUBLICATIONS))
    for other in received[1:]:
        assert sequence(other) == sequence(first)


async def test_concurrent_api_publishes_reach_every_subscriber_gap_free_in_order(
    unlimited_server: ServerProcess,
) -> None:
    url = unlimited_server.ws_url
    async with (
        api_client(unlimited_server) as api,
        ws_client(url) as first,
        ws_client(url) as second,
    ):
        subscribed = await first.result("subscribe", channel="room:order-api")
        await second.result("subscribe", channel="room:order-api")
        receiving = asyncio.ensure_future(receive_all([first, second]))
        replies: list[dict[str, Any]] = []
        for start in range(0, PUBLICATIONS, BATCH):
            batch = range(start, start + BATCH)
            replies += await asyncio.gather(
                *(api.publish("room:order-api", {"n": n}) for n in batch)
            )
        received = await receiving
    assert_gap_free_and_identical(received, subscribed["epoch"])
    # Each publisher was told the offset its data was delivered at.
    offset_of = {n: reply["offset"] for n, reply in enumerate(replies)}
    assert all(offset_of[p["data"]["n"]] == p["offset"] for p in received[0])


async def test_concurrent_websocket_publishes_reach_every_subscriber_gap_free_in_order(
    unlimited_server: ServerProcess,
) -> None:
    url = unlimited_server.ws_url
    async with (
        ws_client(url) as publisher,
        ws_client(url) as first,
        ws_client(url) as second,
    ):
        subscribed = await first.result("subscribe", channel="room:order-ws")
        await second.result("subscribe", channel="room:order-ws")
        receiving = asyncio.ensure_future(receive_all([first, second]))
        replies = await asyncio.gather(
            *(
                publisher.result("publish", channel="room:order-ws", data={"n": n})
                for n in range(PUBLICATIONS)
            )
        )
        received = await receiving
    assert_gap_free_and_identical(received, subscribed["epoch"])
    offset_of = {n: reply["offset"] for n, reply in enumerate(replies)}
    assert all(offset_of[p["data"]["n"]] == p["offset"] for p in received[0])


async def test_publications_of_one_connection_keep_the_order_it_sent_them_in(
    unlimited_server: ServerProcess,
) -> None:
    async with ws_client(unlimited_server.ws_url) as publisher:
        await publisher.result("subscribe", channel="room:fifo")
        # Sent back to back without awaiting replies: the server must sequence them in
        # the order of the frames.
        for n in range(PUBLICATIONS):
            await publisher.send_raw(
                f'{{"op":"publish","id":{n + 1},"channel":"room:fifo","data":{n}}}'
            )
        pushes: list[Frame] = []
        replies: list[Frame] = []
        while len(pushes) < PUBLICATIONS or len(replies) < PUBLICATIONS:
            frame = await publisher.next_push(RECEIVE_TIMEOUT_S)
            if "id" in frame:
                replies.append(frame)
            elif frame["push"] == "pub":
                pushes.append(frame)
    assert [(p["offset"], p["data"]) for p in pushes] == [(n + 1, n) for n in range(PUBLICATIONS)]
    assert sorted((r["id"], r["result"]["offset"]) for r in replies) == [
        (n + 1, n + 1) for n in range(PUBLICATIONS)
    ]
