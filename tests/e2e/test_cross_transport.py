"""Switching transport mid-channel loses nothing and repeats nothing (docs/protocol.md §1, §2).

Each case reads part of a channel over one transport (four publications are made
while it is connected; it takes three, the fourth is in flight when it leaves), then
three are published while no client holds the channel, then the client resumes over
another transport with what the first one gave it (a position, an SSE ``id`` or a poll
cursor), and three more are published once it is connected again. What the client
received, over both transports together, must be offsets 1..10, each exactly once,
in order.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CONFIG, HTTP_TIMEOUT
from tests.support.api import ApiClient
from tests.support.server import ServerProcess, start_server
from tests.support.sse import SseStream, sse_stream
from tests.support.ws import ws_client

BEFORE: Final = 4  # published while the first transport is connected
READ_BEFORE: Final = 3  # of which the client takes this many before it leaves
DURING: Final = 3  # published while no client holds the channel
AFTER: Final = 3  # published once the second transport is connected
TOTAL: Final = BEFORE + DURING + AFTER

LONG_POLL_WAIT: Final = "10"

Publication = dict[str, Any]


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for every case; each case uses its own channel."""
    config = tmp_path_factory.mktemp("cross") / "tidings.toml"
    config.write_text(CONFIG)
    process = start_server(config=config, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


@dataclass
class Case:
    """One client's channel, what it received so far, and the publisher."""

    server: ServerProcess
    http: httpx.AsyncClient
    api: ApiClient
    channel: str
    published: int = 0
    received: list[Publication] = field(default_factory=list)
    cursor: str | None = None
    """The last cursor the first transport gave (an SSE ``id`` or a poll cursor)."""

    async def publish(self, count: int) -> None:
        for _ in range(count):
            self.published += 1
            await self.api.publish(self.channel, {"n": self.published})

    @property
    def since(self) -> str:
        """The client's position as ``<epoch>:<offset>``."""
        last = self.received[-1]
        return f"{last['epoch']}:{last['offset']}"


@pytest.fixture
async def case(shared_server: ServerProcess) -> AsyncIterator[Case]:
    async with httpx.AsyncClient(base_url=shared_server.http_url, timeout=HTTP_TIMEOUT) as http:
        channel = f"room:{uuid.uuid4().hex[:12]}"
        yield Case(shared_server, http, ApiClient(http, API_KEY), channel)


# -- first transports: connect, see BEFORE published, take READ_BEFORE, leave


async def first_over_websocket(case: Case) -> None:
    async with ws_client(case.server.ws_url) as ws:
        await ws.result("subscribe", channel=case.channel)
        await case.publish(BEFORE)
        case.received += await ws.publications(READ_BEFORE)
        await ws.close()


async def first_over_sse(case: Case) -> None:
    async with sse_stream(case.http, {"channel": case.channel}) as stream:
        assert (await stream.next_event()).type == "subscribed"
        await case.publish(BEFORE)
        events = await stream.pub_events(READ_BEFORE)
    case.received += [event.json() for event in events]
    case.cursor = events[-1].last_event_id


async def first_over_poll(case: Case) -> None:
    started = await poll(case.http, {"channel": case.channel})
    await case.publish(BEFORE)
    params = {"channel": case.channel, "cursor": started["cursor"], "limit": str(READ_BEFORE)}
    answer = await poll(case.http, params)
    case.received += answer["publications"]
    case.cursor = answer["cursor"]


# -- second transports: resume, publish AFTER once connected, read through offset TOTAL


async def then_over_websocket_since(case: Case) -> list[Publication]:
    epoch, _, offset = case.since.rpartition(":")
    async with ws_client(case.server.ws_url) as ws:
        result = await ws.result(
            "subscribe", channel=case.channel, since={"epoch": epoch, "offset": int(offset)}
        )
        assert result["recovered"] is True, result
        got: list[Publication] = list(result["publications"])
        await case.publish(AFTER)
        while not got or got[-1]["offset"] < TOTAL:
            got += await ws.publications(1)
    return got


async def read_sse_through_total(case: Case, stream: SseStream) -> list[Publication]:
    subscribed = await stream.next_event()
    assert subscribed.type == "subscribed", subscribed
    assert subscribed.json()["channels"][case.channel]["recovered"] is True
    await case.publish(AFTER)
    got: list[Publication] = []
    while not got or got[-1]["offset"] < TOTAL:
        got += await stream.publications(1)
    return got


async def then_over_sse_since(case: Case) -> list[Publication]:
    params = {"channel": case.channel, "since": case.since}
    async with sse_stream(case.http, params) as stream:
        return await read_sse_through_total(case, stream)


async def then_over_sse_cursor(case: Case) -> list[Publication]:
    assert case.cursor is not None
    params = {"channel": case.channel, "cursor": case.cursor}
    async with sse_stream(case.http, params) as stream:
        return await read_sse_through_total(case, stream)


async def then_over_sse_last_event_id(case: Case) -> list[Publication]:
    assert case.cursor is not None
    headers = {"Last-Event-ID": case.cursor}
    async with sse_stream(case.http, {"channel": case.channel}, headers=headers) as stream:
        return await read_sse_through_total(case, stream)


async def read_polls_through_total(case: Case, first: dict[str, Any]) -> list[Publication]:
    """After the resuming poll: long-poll, publish AFTER once it waits, poll to the end."""
    assert first["recovered"] is True, first
    got: list[Publication] = list(first["publications"])
    params = {"channel": case.channel, "cursor": first["cursor"], "wait": LONG_POLL_WAIT}
    waiting = asyncio.create_task(poll(case.http, params))
    await case.api.wait_for_subscribers(case.channel, 1)
    await case.publish(AFTER)
    answer = await waiting
    got += answer["publications"]
    while got[-1]["offset"] < TOTAL:
        params = {"channel": case.channel, "cursor": answer["cursor"], "wait": LONG_POLL_WAIT}
        answer = await poll(case.http, params)
        assert answer["publications"], "a long poll timed out with publications pending"
        got += answer["publications"]
    return got


async def then_over_poll_since(case: Case) -> list[Publication]:
    first = await poll(case.http, {"channel": case.channel, "since": case.since})
    return await read_polls_through_total(case, first)


async def then_over_poll_cursor(case: Case) -> list[Publication]:
    assert case.cursor is not None
    first = await poll(case.http, {"channel": case.channel, "cursor": case.cursor})
    return await read_polls_through_total(case, first)


async def poll(
    http: httpx.AsyncClient, params: Mapping[str, str | Sequence[str]]
) -> dict[str, Any]:
    response = await http.get("/poll", params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


First = Callable[[Case], Awaitable[None]]
Then = Callable[[Case], Awaitable[list[Publication]]]


@pytest.mark.parametrize(
    ("first", "then"),
    [
        (first_over_websocket, then_over_sse_since),
        (first_over_websocket, then_over_poll_since),
        (first_over_sse, then_over_poll_cursor),
        (first_over_sse, then_over_poll_since),
        (first_over_sse, then_over_websocket_since),
        (first_over_poll, then_over_sse_cursor),
        (first_over_poll, then_over_sse_last_event_id),
        (first_over_poll, then_over_sse_since),
        (first_over_poll, then_over_websocket_since),
    ],
    ids=[
        "websocket-position-to-sse-since",
        "websocket-position-to-poll-since",
        "sse-id-to-poll-cursor",
        "sse-position-to-poll-since",
        "sse-position-to-websocket-since",
        "poll-cursor-to-sse-cursor",
        "poll-cursor-to-sse-last-event-id",
        "poll-position-to-sse-since",
        "poll-position-to-websocket-since",
    ],
)
async def test_client_switching_transport_receives_every_offset_exactly_once(
    case: Case, first: First, then: Then
) -> None:
    await first(case)
    assert [p["offset"] for p in case.received] == list(range(1, READ_BEFORE + 1))
    # The first transport's subscription is gone: what follows reaches nobody live.
    await case.api.wait_for_no_subscribers(case.channel)
    await case.publish(DURING)
    case.received += await then(case)
    assert [p["offset"] for p in case.received] == list(range(1, TOTAL + 1))
    assert [p["data"] for p in case.received] == [{"n": n} for n in range(1, TOTAL + 1)]
    assert len({p["epoch"] for p in case.received}) == 1


async def test_two_channel_sse_id_resumes_both_channels_over_poll(case: Case) -> None:
    other = f"room:{uuid.uuid4().hex[:12]}"
    channels = [case.channel, other]
    async with sse_stream(case.http, {"channel": channels}) as stream:
        assert (await stream.next_event()).type == "subscribed"
        await case.api.publish(case.channel, {"n": 1})
        await case.api.publish(other, {"n": 1})
        events = await stream.pub_events(2)
    await case.api.wait_for_no_subscribers(case.channel)
    await case.api.publish(other, {"n": 2})
    await case.api.publish(case.channel, {"n": 2})
    answer = await poll(case.http, {"channel": channels, "cursor": events[-1].last_event_id})
    assert answer["recovered"] is True
    got = [(p["channel"], p["offset"]) for p in answer["publications"]]
    assert sorted(got) == sorted([(other, 2), (case.channel, 2)])
