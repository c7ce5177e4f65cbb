"""Resuming with a position (docs/protocol.md §2.3): exactly the missed publications, in order,
before any live one — or ``recovered: false`` with the current position, never a silent
skip. Also the ``history`` command, which reads the same history."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.e2e.conftest import api_client, serving
from tests.support.api import ApiClient
from tests.support.server import ServerProcess
from tests.support.ws import Frame, WsClient, ws_client


def position(frame: Frame) -> dict[str, Any]:
    """The ``since`` of a reply or publication."""
    return {"epoch": frame["epoch"], "offset": frame["offset"]}


async def test_resume_replays_exactly_the_missed_publications_then_goes_live(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api:
        async with ws_client(node.ws_url) as client:
            await client.result("subscribe", channel="room:r")
            await api.publish_many("room:r", 3)
            seen = await client.publications(3)
        since = position(seen[-1])
        assert since["offset"] == 3
        await api.publish_many("room:r", 100, start=4)  # while away

        async with ws_client(node.ws_url) as client:
            resumed = await client.result("subscribe", channel="room:r", since=since)
            await api.publish_many("room:r", 5, start=104)
            live = await client.publications(5)

    assert resumed["recovered"] is True
    assert (resumed["epoch"], resumed["offset"]) == (since["epoch"], 103)
    replayed = resumed["publications"]
    assert [p["offset"] for p in replayed] == list(range(4, 104))
    assert [p["data"] for p in replayed] == [{"n": n} for n in range(4, 104)]
    assert all(p["channel"] == "room:r" and p["epoch"] == since["epoch"] for p in replayed)
    # Live ones follow the replay with no gap and no repeat.
    assert [(p["offset"], p["data"]) for p in live] == [(n, {"n": n}) for n in range(104, 109)]


async def test_resume_at_the_head_recovers_nothing_and_misses_nothing(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        head = await api.publish("room:head", {"n": 1})
        resumed = await client.result("subscribe", channel="room:head", since=head)
        await api.publish("room:head", {"n": 2})
        [live] = await client.publications(1)
    assert resumed == {**head, "recovered": True, "publications": []}
    assert live["offset"] == 2


async def test_subscribe_without_since_reports_the_current_position_and_no_recovery(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        head = await api.publish("room:fresh", {"n": 1})
        subscribed = await client.result("subscribe", channel="room:fresh")
    assert subscribed == {**head, "recovered": False, "publications": []}


async def test_resume_from_a_position_evicted_from_history_says_recovered_false(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        first = await api.publish("small:s", {"n": 1})
        await api.publish_many("small:s", 9, start=2)  # history keeps the last 5
        resumed = await client.result("subscribe", channel="small:s", since=first)
        await api.publish("small:s", {"n": 11})
        [live] = await client.publications(1)
    assert resumed == {
        "epoch": first["epoch"],
        "offset": 10,
        "recovered": False,
        "publications": [],
    }
    assert live["offset"] == 11


async def test_resume_from_the_oldest_retained_predecessor_still_recovers(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        await api.publish_many("small:edge", 9)
        epoch = (await api.publish("small:edge", {"n": 10}))["epoch"]  # 6..10 retained
        resumed = await client.result(
            "subscribe", channel="small:edge", since={"epoch": epoch, "offset": 5}
        )
    assert resumed["recovered"] is True
    assert [p["offset"] for p in resumed["publications"]] == [6, 7, 8, 9, 10]


async def test_resume_with_an_unknown_epoch_says_recovered_false_with_the_current_position(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        await api.publish_many("room:e", 3)
        current = await api.publish("room:e", {"n": 4})
        resumed = await client.result(
            "subscribe", channel="room:e", since={"epoch": "lostEpoch", "offset": 2}
        )
    assert resumed == {**current, "recovered": False, "publications": []}


async def test_resume_from_a_position_ahead_of_the_head_says_recovered_false(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        current = await api.publish("room:ahead", {"n": 1})
        resumed = await client.result(
            "subscribe",
            channel="room:ahead",
            since={"epoch": current["epoch"], "offset": 500},
        )
    assert resumed == {**current, "recovered": False, "publications": []}


async def test_history_since_a_position_pages_forward_with_limit(node: ServerProcess) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        await api.publish_many("room:h", 10)
        epoch = (await api.publish("room:h", {"n": 11}))["epoch"]
        page = await client.result(
            "history", channel="room:h", since={"epoch": epoch, "offset": 2}, limit=3
        )
        rest = await client.result("history", channel="room:h", since={"epoch": epoch, "offset": 5})
    assert (page["epoch"], page["offset"], page["recovered"]) == (epoch, 11, True)
    assert [(p["offset"], p["data"]) for p in page["publications"]] == [
        (3, {"n": 3}),
        (4, {"n": 4}),
        (5, {"n": 5}),
    ]
    assert [p["offset"] for p in rest["publications"]] == list(range(6, 12))


async def test_history_without_since_returns_the_latest_publications_oldest_first(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        await api.publish_many("room:latest", 10)
        latest = await client.result("history", channel="room:latest", limit=4)
        everything = await client.result("history", channel="room:latest")
    assert [p["offset"] for p in latest["publications"]] == [7, 8, 9, 10]
    assert "recovered" not in latest
    assert [p["offset"] for p in everything["publications"]] == list(range(1, 11))


async def test_history_since_an_evicted_position_says_recovered_false_with_no_publications(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        first = await api.publish("small:h", {"n": 1})
        await api.publish_many("small:h", 9, start=2)
        read = await client.result("history", channel="small:h", since=first, limit=2)
    assert read == {
        "epoch": first["epoch"],
        "offset": 10,
        "publications": [],
        "recovered": False,
    }


BURST: Final = 200
RESUMERS: Final = 3


async def publish_burst(api: ApiClient, channel: str, offsets: range) -> None:
    """Publish ``{"n": offset}`` for each offset, a few concurrently at a time."""
    for start in range(offsets.start, offsets.stop, 10):
        batch = range(start, min(start + 10, offsets.stop))
        await asyncio.gather(*(api.publish(channel, {"n": n}) for n in batch))


async def offsets_until(client: WsClient, reply: Frame, last: int) -> list[int]:
    """The offsets a subscriber was given: in the reply, then live up to ``last``."""
    offsets = [p["offset"] for p in reply["publications"]]
    while (offsets[-1] if offsets else reply["offset"]) < last:
        offsets += [p["offset"] for p in await client.publications(1)]
    return offsets


@pytest.mark.parametrize("broker", ["memory", "sqlite"])
async def test_subscribing_during_a_burst_of_publications_loses_and_repeats_nothing(
    config_file: Path, tmp_path: Path, broker: str
) -> None:
    data = tmp_path / "data" if broker == "sqlite" else None
    with serving(config_file, data=data) as process:
        async with api_client(process) as api, contextlib.AsyncExitStack() as stack:
            first = await api.publish("room:burst", {"n": 1})
            burst = asyncio.ensure_future(publish_burst(api, "room:burst", range(2, BURST + 1)))
            # Clients subscribe one after another while the burst goes on, so history
            # reads race with live publications; half resume from offset 1.
            subscribed: list[tuple[WsClient, Frame, bool]] = []
            for n in range(RESUMERS * 2):
                client = await stack.enter_async_context(ws_client(process.ws_url))
                resuming = n % 2 == 0
                since = {"since": first} if resuming else {}
                reply = await client.result("subscribe", channel="room:burst", **since)
                subscribed.append((client, reply, resuming))
            await burst
            given = [
                (reply, resuming, await offsets_until(client, reply, BURST))
                for client, reply, resuming in subscribed
            ]
    for reply, resuming, offsets in given:
        # A fresh subscriber starts after the position it is given (the reply may
        # already carry publications that arrived while it subscribed).
        start = 1 if resuming else reply["offset"] - len(reply["publications"])
        assert offsets == list(range(start + 1, BURST + 1)), (resuming, reply["offset"])
        if resuming:
            assert reply["recovered"] is True


@pytest.fixture
def small_buffer_server(config_file: Path) -> Iterator[ServerProcess]:
    """A server whose outbound buffer per connection is 64 KiB."""
    with serving(config_file, {"TIDINGS_OUTBOUND_BUFFER": "64KiB"}) as process:
        yield process


async def publish_blobs(api: ApiClient, channel: str, count: int, size: int) -> None:
    for n in range(count):
        await api.publish(channel, {"n": n, "blob": "b" * size})


async def test_resume_whose_missed_publications_exceed_the_outbound_buffer_still_converges(
    small_buffer_server: ServerProcess,
) -> None:
    async with api_client(small_buffer_server) as api:
        async with ws_client(small_buffer_server.ws_url) as client:
            since = await client.result("subscribe", channel="room:big")
        await publish_blobs(api, "room:big", 100, 1000)  # ~100 KB missed, buffer 64 KiB
        async with ws_client(small_buffer_server.ws_url) as client:
            reply = await client.request("subscribe", channel="room:big", since=position(since))
    # Either every missed publication, or an honest "recovered: false": the client must
    # not be sent away to reconnect into the same cut forever.
    result = reply["result"]
    if result["recovered"]:
        assert [p["offset"] for p in result["publications"]] == list(range(1, 101))
    else:
        assert result["offset"] == 100
