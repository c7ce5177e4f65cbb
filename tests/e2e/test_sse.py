"""Server-Sent Events against a real server (docs/protocol.md §4, §7, §8).

Streams are read with ``tests.support.sse``, a parser that follows the HTML standard
line by line and keeps the raw lines, so these tests check both what a browser's
``EventSource`` would deliver and the framing itself. Most tests share one server per
module and use channels of their own; tests that stop or reconfigure a server start
their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Final

import httpx
import jwt
import pytest

from tests.e2e.conftest import (
    ALLOWED_ORIGIN,
    API_KEY,
    CONFIG,
    HTTP_TIMEOUT,
    JWT_SECRET,
    unique,
)
from tests.support.api import ApiClient
from tests.support.server import ServerProcess, start_server
from tests.support.sse import SseComment, SseEvent, SseParser, SseStream, sse_stream
from tests.support.ws import ws_client
from tidings.core.channel import ChannelName
from tidings.core.cursor import MAX_CURSOR_LENGTH, encode_cursor
from tidings.core.publication import Position
from tidings.errors import BadRequest

CURSOR_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,4096}")
EPOCH_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,32}")
# docs/protocol.md §4: a ping after 15 s of silence. The heartbeat test waits for it with
# this bound; it is the one slow test here (select the rest with -k "not slow").
PING_BOUND_S: Final = 20.0


async def subscribed_event(stream: SseStream) -> dict[str, Any]:
    """Read the ``subscribed`` event that opens a stream; return its ``channels``."""
    assert stream.response.status_code == 200, await stream.response.aread()
    event = await stream.next_event()
    assert event.type == "subscribed", event
    channels: dict[str, Any] = event.json()["channels"]
    return channels


def assert_framed_as_one_pub_event(event: SseEvent) -> None:
    """docs/protocol.md §4: ``id``, ``event: pub`` and exactly one ``data:`` line, nothing else."""
    assert event.type == "pub"
    assert len(event.field_lines("data")) == 1, event.lines
    assert len(event.field_lines("event")) == 1, event.lines
    assert len(event.field_lines("id")) == 1, event.lines
    assert len(event.lines) == 3, event.lines
    assert CURSOR_PATTERN.fullmatch(event.last_event_id), event.last_event_id


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The ``error`` object of a JSON error answer (docs/protocol.md §7)."""
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


# -- the reader itself (tests.support.sse): it must be right for the rest to mean anything


def test_reader_ends_lines_at_crlf_lf_and_cr_only() -> None:
    parser = SseParser()
    items = parser.feed("\ufeffdata: a\u2028b\x85c\r")
    items += parser.feed("\ndata: d\rdata: e\n\r\n")
    data_lines = ("data: a\u2028b\x85c", "data: d", "data: e")
    assert items == [SseEvent("message", "a\u2028b\x85c\nd\ne", "", data_lines)]
    assert parser.lines == [*data_lines, ""]


def test_reader_follows_the_field_rules_of_the_standard() -> None:
    parser = SseParser()
    items = parser.feed(
        ": a comment\nretry: 2500\nretry: 1x\nid: 42\nevent:  spaced\ndata\n"
        "data:no-space\nunknown: field\n\n"
        "id: bad\0id\ndata: second\n\n"
        "event: empty\n\n"
        "data: unfinished"
    )
    first, second = (item for item in items if isinstance(item, SseEvent))
    assert items[0] == SseComment(" a comment")
    assert parser.retry_ms == 2500
    assert (first.type, first.data, first.last_event_id) == (" spaced", "\nno-space", "42")
    assert (second.type, second.data, second.last_event_id) == ("message", "second", "42")
    assert len(items) == 3  # no event without data, none unfinished


# -- framing


async def test_stream_opens_with_retry_then_subscribed_listing_each_channels_position(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    quiet, busy = unique(), unique()
    published = [await api.publish(busy, {"n": n}) for n in (1, 2)]
    async with sse_stream(http, {"channel": [quiet, busy]}) as stream:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        channels = await subscribed_event(stream)
        first_line = stream.parser.lines[0]
        first_event = stream.events[0]
    assert first_line.startswith("retry: "), first_line
    assert first_line[7:].isdigit(), first_line
    assert stream.parser.retry_ms == int(first_line[7:])
    assert first_event.lines[0] == first_line
    assert len(first_event.field_lines("data")) == 1
    assert list(channels) == [quiet, busy]
    assert channels[busy] == {"epoch": published[1]["epoch"], "offset": 2, "recovered": False}
    assert EPOCH_PATTERN.fullmatch(channels[quiet]["epoch"])
    assert channels[quiet]["offset"] == 0
    assert channels[quiet]["recovered"] is False


async def test_each_publication_is_one_pub_event_with_one_data_line_and_a_cursor_id(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    async with sse_stream(http, {"channel": channel}) as stream:
        await subscribed_event(stream)
        sent = [await api.publish(channel, {"n": n}) for n in (1, 2, 3)]
        events = await stream.pub_events(3)
        lines_after_subscribed = stream.parser.lines[len(stream.events[0].lines) + 1 :]
    for event in events:
        assert_framed_as_one_pub_event(event)
    assert [event.json()["offset"] for event in events] == [1, 2, 3]
    for event, position in zip(events, sent, strict=True):
        publication = event.json()
        assert publication["channel"] == channel
        assert publication["epoch"] == position["epoch"]
        assert isinstance(publication["ts"], int)
    assert [event.json()["data"] for event in events] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert len({event.last_event_id for event in events}) == 3
    # Nothing between the events: id, event, data and the blank line, three times.
    assert len(lines_after_subscribed) == 12, lines_after_subscribed


async def test_two_channel_ids_resume_both_channels_exactly_from_any_event(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    a, b = unique(), unique()
    received: list[dict[str, Any]] = []
    async with sse_stream(http, {"channel": [a, b]}) as stream:
        ids = [(await stream.next_event()).last_event_id]  # the subscribed event's
        for channel in (a, b, a, b, a, b):
            await api.publish(channel, {"on": channel})
            [event] = await stream.pub_events(1)
            assert_framed_as_one_pub_event(event)
            ids.append(event.last_event_id)
            received.append(event.json())
    async with contextlib.AsyncExitStack() as streams:
        resumed = [
            await streams.enter_async_context(
                sse_stream(http, {"channel": [a, b]}, headers={"Last-Event-ID": cursor})
            )
            for cursor in ids
        ]
        for k, stream in enumerate(resumed):
            channels = await subscribed_event(stream)
            assert channels[a]["recovered"] is True, (k, channels)
            assert channels[b]["recovered"] is True, (k, channels)
            replayed = await stream.publications(len(received) - k)
            for channel in (a, b):
                expected = [p["offset"] for p in received[k:] if p["channel"] == channel]
                got = [p["offset"] for p in replayed if p["channel"] == channel]
                assert got == expected, (k, channel)
        # Nothing more was replayed: the next events are the live ones, in every stream.
        await api.publish(a, {"live": "a"})
        await api.publish(b, {"live": "b"})
        for stream in resumed:
            live = await stream.publications(2)
            assert [(p["channel"], p["offset"]) for p in live] == [(a, 4), (b, 4)]


# -- publication data cannot forge events


INJECTIONS: Final[dict[str, Any]] = {
    "lf": "line one\nline two",
    "cr": "line one\rline two",
    "crlf": "line one\r\nline two",
    "data-field": "x\ndata: evil",
    "event-field": "\n\nevent: pub\ndata: {}\n\n",
    "id-field": "\nid: x\nretry: 1\n\n",
    "comment": ": ping\n\n:",
    "unicode-separators": "\u2028\u2029\x85\x0b\x0c",
    "emoji": "🎉 👩‍👩‍👧 中文",
    "nul": "\u0000 after a NUL",
    "bom": "\ufeffdata: x",
    "escapes-as-text": "\\n\\r\\u0000",
    "nested": {"k\ndata: y": ["\r", "\n", {"id: z": "\r\n\r\n"}]},
    "long-lines": "line\n" * 10_000,
    "long": "x" * 60_000,
}


@pytest.mark.parametrize("data", INJECTIONS.values(), ids=INJECTIONS.keys())
async def test_published_data_arrives_as_exactly_one_event_with_equal_data(
    http: httpx.AsyncClient, api: ApiClient, data: Any
) -> None:
    channel = unique("")
    async with sse_stream(http, {"channel": channel}) as stream:
        await subscribed_event(stream)
        await api.publish_ascii(channel, data)  # non-ASCII escaped as \uXXXX
        await api.publish_utf8(channel, data)  # non-ASCII as raw UTF-8
        await api.publish(channel, "sentinel")
        events: list[SseEvent] = []
        while not events or events[-1].json()["data"] != "sentinel":
            events.append(await stream.next_event())
    assert len(events) == 3, [event.lines for event in events]
    for event in events:
        assert_framed_as_one_pub_event(event)
    assert [event.json()["data"] for event in events] == [data, data, "sentinel"]
    assert [event.json()["offset"] for event in events] == [1, 2, 3]
    assert stream.comments == []


async def test_raw_line_breaks_between_json_tokens_do_not_split_the_event(
    shared_server: ServerProcess, http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()  # room: clients may publish
    async with sse_stream(http, {"channel": channel}) as stream:
        await subscribed_event(stream)
        # Raw CR and LF are JSON whitespace between tokens; inside strings they are escaped.
        name = json.dumps(channel)
        body = '{"channel":' + name + ',"data":\r\n{"a":\r[1,\n2],\r\n"b":"c\\nd"}\n}'
        response = await api.publish_body(body.encode())
        assert response.status_code == 200, response.text
        async with ws_client(shared_server.ws_url) as ws:
            await ws.send_raw(
                '{"op":"publish","id":1,"channel":' + name + ',"data":\n{"e":\r\n[3,\r4]}}'
            )
            reply = await ws.next_push()
            assert "result" in reply, reply
        events = await stream.pub_events(2)
    for event in events:
        assert_framed_as_one_pub_event(event)
    assert [event.json()["data"] for event in events] == [
        {"a": [1, 2], "b": "c\nd"},
        {"e": [3, 4]},
    ]


# -- resuming


async def test_last_event_id_resumes_with_exactly_the_missed_publications(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    await api.publish_many(channel, 2)  # before the stream: not sent to it
    async with sse_stream(http, {"channel": channel}) as stream:
        await subscribed_event(stream)
        await api.publish(channel, {"n": 3})
        [last_seen] = await stream.pub_events(1)
    assert last_seen.json()["offset"] == 3
    await api.publish_many(channel, 4, start=4)  # while away
    headers = {"Last-Event-ID": last_seen.last_event_id}
    async with sse_stream(http, {"channel": channel}, headers=headers) as stream:
        channels = await subscribed_event(stream)
        replayed = await stream.publications(4)
        await api.publish(channel, {"n": 8})
        [live] = await stream.publications(1)
    assert channels[channel]["recovered"] is True
    assert channels[channel]["offset"] == 7
    assert [p["offset"] for p in replayed] == [4, 5, 6, 7]
    assert [p["data"]["n"] for p in replayed] == [4, 5, 6, 7]
    assert live["offset"] == 8


async def test_cursor_parameter_resumes_with_exactly_the_missed_publications(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    async with sse_stream(http, {"channel": channel}) as stream:
        await subscribed_event(stream)
        await api.publish_many(channel, 2)
        [_, second] = await stream.pub_events(2)
    await api.publish_many(channel, 2, start=3)
    params = {"channel": channel, "cursor": second.last_event_id}
    async with sse_stream(http, params) as stream:
        channels = await subscribed_event(stream)
        replayed = await stream.publications(2)
        await api.publish(channel, {"n": 5})
        [live] = await stream.publications(1)
    assert channels[channel]["recovered"] is True
    assert [p["offset"] for p in replayed] == [3, 4]
    assert live["offset"] == 5


async def test_since_positions_resume_each_channel_from_its_own_position_in_order(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    a, b = unique(), unique()
    epoch = (await api.publish(a, {"n": 1}))["epoch"]
    await api.publish_many(a, 4, start=2)  # a: 1..5
    await api.publish_many(b, 3)  # b: 1..3
    params = {"channel": [a, b], "since": [f"{epoch}:2", f"{epoch}:1"]}
    async with sse_stream(http, params) as stream:
        channels = await subscribed_event(stream)
        replayed = await stream.publications(5)
        await api.publish(b, {"n": 4})
        [live] = await stream.publications(1)
    assert channels[a] == {"epoch": epoch, "offset": 5, "recovered": True}
    assert channels[b] == {"epoch": epoch, "offset": 3, "recovered": True}
    assert [p["offset"] for p in replayed if p["channel"] == a] == [3, 4, 5]
    assert [p["offset"] for p in replayed if p["channel"] == b] == [2, 3]
    assert (live["channel"], live["offset"]) == (b, 4)


async def test_last_event_id_wins_over_the_cursor_parameter(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    async with sse_stream(http, {"channel": channel}) as stream:
        start = (await stream.next_event()).last_event_id
        await api.publish_many(channel, 3)
        [_, second, _] = await stream.pub_events(3)
    params = {"channel": channel, "cursor": start}
    headers = {"Last-Event-ID": second.last_event_id}
    async with sse_stream(http, params, headers=headers) as stream:
        channels = await subscribed_event(stream)
        replayed = await stream.publications(1)
        await api.publish(channel, {"n": 4})
        [live] = await stream.publications(1)
    assert channels[channel]["recovered"] is True
    assert [p["offset"] for p in replayed] == [3]
    assert live["offset"] == 4


async def test_browser_reconnect_with_last_event_id_wins_over_since_in_the_url(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    # A client that came from another transport opened the stream with since=; when
    # the browser reconnects, the URL still says since= but Last-Event-ID is newer.
    channel = unique()
    epoch = (await api.publish(channel, {"n": 1}))["epoch"]
    params = {"channel": channel, "since": f"{epoch}:0"}
    async with sse_stream(http, params) as stream:
        await subscribed_event(stream)
        await api.publish(channel, {"n": 2})
        [_, second] = await stream.pub_events(2)
    await api.publish(channel, {"n": 3})
    headers = {"Last-Event-ID": second.last_event_id}
    async with sse_stream(http, params, headers=headers) as stream:
        channels = await subscribed_event(stream)
        replayed = await stream.publications(1)
    assert channels[channel]["recovered"] is True
    assert [p["offset"] for p in replayed] == [3]


async def test_resume_from_an_evicted_position_says_recovered_false_and_goes_live(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique("small")  # history_size 5
    epoch = (await api.publish(channel, {"n": 1}))["epoch"]
    await api.publish_many(channel, 9, start=2)  # offsets 1..10; 6..10 retained
    params = {"channel": channel, "since": f"{epoch}:4"}
    async with sse_stream(http, params) as stream:
        channels = await subscribed_event(stream)
        await api.publish(channel, {"n": 11})
        [live] = await stream.publications(1)
    assert channels[channel] == {"epoch": epoch, "offset": 10, "recovered": False}
    assert live["offset"] == 11  # nothing replayed before it
    # The oldest recoverable position (its successor, 7, is retained) still recovers.
    params = {"channel": channel, "since": f"{epoch}:6"}
    async with sse_stream(http, params) as stream:
        channels = await subscribed_event(stream)
        replayed = await stream.publications(5)
    assert channels[channel]["recovered"] is True
    assert [p["offset"] for p in replayed] == [7, 8, 9, 10, 11]


async def test_resume_from_another_epoch_says_recovered_false(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    epoch = (await api.publish(channel, {"n": 1}))["epoch"]
    other = "x" + epoch[1:] if not epoch.startswith("x") else "y" + epoch[1:]
    async with sse_stream(http, {"channel": channel, "since": f"{other}:0"}) as stream:
        channels = await subscribed_event(stream)
    assert channels[channel] == {"epoch": epoch, "offset": 1, "recovered": False}


# -- refused requests


def corrupted_variants(cursor: str) -> list[str]:
    """Cursors a client could hand back by mistake: altered, cut, extended, foreign."""
    middle = len(cursor) // 2
    flipped = cursor[:middle] + ("B" if cursor[middle] != "B" else "C") + cursor[middle + 1 :]
    return [flipped, cursor[:-3], cursor + "A", "not-a-cursor", "%%%", "a" * 5000]


async def test_corrupted_cursor_is_refused_with_bad_request(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    await api.publish(channel, {"n": 1})
    async with sse_stream(http, {"channel": channel}) as stream:
        cursor = (await stream.next_event()).last_event_id
    for variant in corrupted_variants(cursor):
        by_parameter = await http.get("/sse", params={"channel": channel, "cursor": variant})
        by_header = await http.get(
            "/sse", params={"channel": channel}, headers={"Last-Event-ID": variant}
        )
        for response in (by_parameter, by_header):
            assert response.status_code == 400, (variant, response.text)
            assert error_of(response)["code"] == "bad_request"


@pytest.mark.parametrize(
    "params",
    [
        {"channel": ["room:a", "room:b"], "since": "e:1"},
        {"channel": "room:a", "since": ["e:1", "e:2"]},
        {"channel": "room:a", "since": "no-offset"},
        {"channel": "room:a", "since": "e:-1"},
        {},
        {"channel": ""},
        {"channel": ["room:a", "room:a"]},
        {"channel": "bad channel"},
    ],
    ids=[
        "fewer-since",
        "more-since",
        "since-without-offset",
        "negative-offset",
        "no-channel",
        "empty-channel",
        "channel-twice",
        "invalid-channel",
    ],
)
async def test_malformed_stream_request_is_refused_with_bad_request(
    http: httpx.AsyncClient, params: dict[str, str | list[str]]
) -> None:
    response = await http.get("/sse", params=params)
    assert response.status_code == 400, response.text
    assert error_of(response)["code"] == "bad_request"


async def test_token_policy_channel_without_token_is_forbidden(http: httpx.AsyncClient) -> None:
    response = await http.get("/sse", params={"channel": [unique(), unique("secret")]})
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "permission_denied"


async def test_token_policy_channel_opens_only_with_a_token_listing_it(
    auth_server: ServerProcess,
) -> None:
    channel = unique("secret")

    def token(channels: list[str]) -> str:
        claims = {"sub": "alice", "exp": int(time.time()) + 600, "channels": channels}
        return jwt.encode(claims, JWT_SECRET, algorithm="HS256")

    async with httpx.AsyncClient(base_url=auth_server.http_url, timeout=HTTP_TIMEOUT) as http:
        refused = await http.get("/sse", params={"channel": channel, "token": token([])})
        params = {"channel": channel, "token": token([channel])}
        async with sse_stream(http, params) as stream:
            channels = await subscribed_event(stream)
    assert refused.status_code == 403, refused.text
    assert error_of(refused)["code"] == "permission_denied"
    assert channels[channel]["offset"] == 0


def channels_with_cursor_length(epoch: str, length: int, offset: int) -> list[str]:
    """Channels whose cursor, with each at ``Position(epoch, offset)``, is ``length`` long."""

    def cursor_length(channels: list[str]) -> int:
        positions = {ChannelName(c): Position(epoch, offset) for c in channels}
        try:
            return len(encode_cursor(positions))
        except BadRequest:  # longer than the server allows
            return MAX_CURSOR_LENGTH + 1

    def long_name() -> str:
        return f"room:{uuid.uuid4().hex}{'x' * 150}"

    channels: list[str] = []
    last = f"room:{uuid.uuid4().hex}"
    while cursor_length([*channels, long_name(), last]) < length:
        channels.append(long_name())
    while cursor_length([*channels, last]) < length:
        last += "y"
    assert cursor_length([*channels, last]) == length
    return [*channels, last]


async def test_channel_set_whose_cursor_exceeds_4_kib_is_refused_with_bad_request(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    # 40 names of 200 random hex digits: at least 4,000 bytes of entropy, so no cursor
    # encoding can hold their positions in 4,096 URL-safe characters.
    channels = [f"room:{secrets.token_hex(100)}" for _ in range(40)]
    poll = await http.get("/poll", params={"channel": channels})
    assert poll.status_code == 400  # polling refuses it, as it should
    async with sse_stream(http, {"channel": channels}) as stream:
        status = stream.response.status_code
    assert status == 400


async def test_stream_whose_cursor_outgrows_4_kib_never_silently_skips(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    epoch = (await api.publish(unique(), {"n": 1}))["epoch"]
    channels = channels_with_cursor_length(epoch, 4096, offset=9)
    for channel in channels:
        await api.publish_many(channel, 9)  # every channel at offset 9: cursor 4096 long
    async with sse_stream(http, {"channel": channels}) as stream:
        if stream.response.status_code == 400:
            return  # refusing a stream whose cursor could outgrow 4 KiB is also correct
        await subscribed_event(stream)
        await api.publish(channels[0], {"n": 10})  # offset 10: the cursor grows by a byte
        # Anonymous streams are user "": this test's stream is the only one now.
        response = await http.post("/api/disconnect", json={"user": ""}, headers=api.headers)
        assert response.json()["disconnected"] >= 1
        rest = await stream.rest()
    # Either the publication, or a disconnect that tells the client to resume: never
    # a silent hole.
    assert [event.type for event in rest] == ["pub", "disconnect"], rest


# -- heartbeat, shutdown


async def test_slow_silent_stream_gets_a_ping_comment_after_15_s(tmp_path: Path) -> None:
    """The slow test of this module: it waits for the 15 s heartbeat (at most 20 s).

    The server runs with ``ping_interval = 1`` so its heartbeat timer ticks every 0.25 s
    and the SSE ping comes right after 15 s of silence, well within the bound.
    """
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    server = start_server(
        config=config, env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_PING_INTERVAL": "1"}
    )
    try:
        channel = unique()
        async with (
            httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT) as http,
            sse_stream(http, {"channel": channel}) as stream,
        ):
            await subscribed_event(stream)
            comment = await stream.next_comment(wait_s=PING_BOUND_S)
            await ApiClient(http, API_KEY).publish(channel, {"after": "ping"})
            [publication] = await stream.publications(1)
    finally:
        server.kill()
    assert comment == SseComment(" ping")
    assert ": ping" in stream.parser.lines
    assert [event.type for event in stream.events] == ["subscribed", "pub"]
    assert publication["data"] == {"after": "ping"}


async def test_sigterm_sends_disconnect_with_reconnect_before_the_stream_ends(
    server: ServerProcess,
) -> None:
    channel = unique()
    async with (
        httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT) as http,
        sse_stream(http, {"channel": channel}) as stream,
    ):
        await subscribed_event(stream)
        await ApiClient(http, API_KEY).publish(channel, {"n": 1})
        await stream.publications(1)
        stopping = asyncio.create_task(asyncio.to_thread(server.stop, signal.SIGTERM))
        rest = await stream.rest()
        exit_code = await stopping
    assert [event.type for event in rest] == ["disconnect"]
    goodbye = rest[0].json()
    assert goodbye["code"] == 1001
    assert goodbye["reconnect"] is True
    assert isinstance(goodbye["reason"], str)
    assert stream.error is None  # the stream ended cleanly, after the goodbye
    # uvicorn re-raises the signal once it has shut down, so process managers see it.
    assert exit_code in (0, -signal.SIGTERM)


# -- origins (docs/protocol.md §8)


async def test_listed_origin_gets_access_control_allow_origin(http: httpx.AsyncClient) -> None:
    headers = {"Origin": ALLOWED_ORIGIN}
    async with sse_stream(http, {"channel": unique()}, headers=headers) as stream:
        await subscribed_event(stream)
        allowed = stream.response.headers.get("access-control-allow-origin")
    assert allowed == ALLOWED_ORIGIN


async def test_unlisted_origin_is_refused_with_403(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/sse", params={"channel": unique()}, headers={"Origin": "https://evil.example.com"}
    )
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "permission_denied"
    assert "access-control-allow-origin" not in response.headers


async def test_same_origin_page_needs_no_listing(
    shared_server: ServerProcess, http: httpx.AsyncClient
) -> None:
    headers = {"Origin": shared_server.http_url}
    async with sse_stream(http, {"channel": unique()}, headers=headers) as stream:
        await subscribed_event(stream)


async def test_preflight_is_answered_for_a_listed_origin_only(http: httpx.AsyncClient) -> None:
    request_headers = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id, authorization",
    }
    listed = await http.options("/sse", headers={"Origin": ALLOWED_ORIGIN, **request_headers})
    unlisted = await http.options(
        "/sse", headers={"Origin": "https://evil.example.com", **request_headers}
    )
    assert 200 <= listed.status_code < 300, listed.text
    assert listed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "GET" in listed.headers["access-control-allow-methods"]
    allowed_headers = listed.headers["access-control-allow-headers"].lower()
    assert "last-event-id" in allowed_headers
    assert "authorization" in allowed_headers
    assert unlisted.status_code == 403
    assert "access-control-allow-origin" not in unlisted.headers
