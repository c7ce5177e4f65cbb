"""Short and long polling against a real server (docs/protocol.md §5, §7, §8).

Most tests share one server per module and use channels of their own; tests that stop
the server start their own. A long poll is known to be waiting when ``/api/channels``
shows its channel's subscriber: the tests publish only then, so they exercise the
wake-up rather than a read that happened to come late.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Mapping, Sequence
from typing import Any, Final

import httpx
import pytest

from tests.e2e.conftest import (
    ALLOWED_ORIGIN,
    API_KEY,
    HTTP_TIMEOUT,
    unique,
)
from tests.support.api import ApiClient
from tests.support.server import ServerProcess

# Bounds on awaiting a long poll that the test expects to be answered: a failure
# shows up as a timeout well before the poll's own ``wait`` would end it.
ANSWER_BOUND_S: Final = 10.0
LONG_POLLERS: Final = 200


Params = Mapping[str, str | Sequence[str]]


async def poll(
    http: httpx.AsyncClient, params: Params, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """``GET /poll``; return the answer, which must be a 200 of the §5 shape."""
    response = await http.get("/poll", params=params, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    assert set(answer) == {"publications", "cursor", "recovered", "positions"}, answer
    assert response.headers["etag"] == f'"{answer["cursor"]}"'
    return answer


async def start_cursor(http: httpx.AsyncClient, *channels: str) -> str:
    """The cursor of ``channels`` now (a poll without cursor)."""
    answer = await poll(http, {"channel": list(channels)})
    cursor: str = answer["cursor"]
    return cursor


def offsets(answer: dict[str, Any], channel: str | None = None) -> list[int]:
    return [
        p["offset"] for p in answer["publications"] if channel is None or p["channel"] == channel
    ]


def error_code(response: httpx.Response) -> str:
    """The ``code`` of a JSON error answer (docs/protocol.md §7)."""
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["message"], body
    code: str = body["error"]["code"]
    return code


# -- short polling


async def test_short_poll_without_cursor_starts_from_now(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    await api.publish_many(channel, 2)
    first = await poll(http, {"channel": channel})
    assert first["publications"] == []
    assert first["recovered"] is False
    again = await poll(http, {"channel": channel, "cursor": first["cursor"]})
    assert again["publications"] == []
    assert again["recovered"] is True
    assert again["cursor"] == first["cursor"]
    await api.publish(channel, {"n": 3})
    later = await poll(http, {"channel": channel, "cursor": first["cursor"]})
    assert offsets(later) == [3]  # not 1 and 2: they came before the start


async def test_short_poll_with_cursor_answers_the_publications_after_it(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    start = await start_cursor(http, channel)
    await api.publish_many(channel, 3)
    first = await poll(http, {"channel": channel, "cursor": start})
    await api.publish_many(channel, 2, start=4)
    second = await poll(http, {"channel": channel, "cursor": first["cursor"]})
    replayed = await poll(http, {"channel": channel, "cursor": start})
    assert offsets(first) == [1, 2, 3]
    assert [p["data"] for p in first["publications"]] == [{"n": 1}, {"n": 2}, {"n": 3}]
    assert {p["channel"] for p in first["publications"]} == {channel}
    assert all(isinstance(p["ts"], int) for p in first["publications"])
    assert first["recovered"] is True
    assert offsets(second) == [4, 5]
    assert offsets(replayed) == [1, 2, 3, 4, 5]  # a cursor is a position, not a lease


# -- long polling


async def test_long_poll_is_answered_as_soon_as_a_publication_arrives(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    start = await start_cursor(http, channel)
    waiting = asyncio.create_task(poll(http, {"channel": channel, "cursor": start, "wait": "30"}))
    await api.wait_for_subscribers(channel, 1)
    assert not waiting.done()  # it is waiting, not answered
    await api.publish(channel, {"n": 1})
    answer = await asyncio.wait_for(waiting, ANSWER_BOUND_S)
    assert offsets(answer) == [1]
    assert answer["publications"][0]["data"] == {"n": 1}
    assert answer["recovered"] is True
    after = await poll(http, {"channel": channel, "cursor": answer["cursor"]})
    assert after["publications"] == []


async def test_long_poll_time_out_answers_an_empty_list_and_the_same_cursor(
    http: httpx.AsyncClient,
) -> None:
    channel = unique()
    start = await start_cursor(http, channel)
    answer = await poll(http, {"channel": channel, "cursor": start, "wait": "1"})
    assert answer["publications"] == []
    assert answer["cursor"] == start
    assert answer["recovered"] is True


async def test_many_long_pollers_on_one_channel_are_all_woken_by_one_publication(
    shared_server: ServerProcess, api: ApiClient
) -> None:
    channel = unique()
    limits = httpx.Limits(max_connections=LONG_POLLERS + 10)
    async with httpx.AsyncClient(
        base_url=shared_server.http_url, timeout=HTTP_TIMEOUT, limits=limits
    ) as pollers:
        start = await start_cursor(pollers, channel)
        params = {"channel": channel, "cursor": start, "wait": "30"}
        waiting = [asyncio.create_task(poll(pollers, params)) for _ in range(LONG_POLLERS)]
        try:
            await api.wait_for_subscribers(channel, LONG_POLLERS, wait_s=30)
            await api.publish(channel, {"to": "everyone"})
            answers = await asyncio.wait_for(asyncio.gather(*waiting), ANSWER_BOUND_S)
        finally:
            for task in waiting:
                task.cancel()
    assert len(answers) == LONG_POLLERS
    for answer in answers:
        assert [(p["offset"], p["data"]) for p in answer["publications"]] == [
            (1, {"to": "everyone"})
        ]
    assert len({answer["cursor"] for answer in answers}) == 1


async def test_sigterm_answers_a_waiting_long_poll(server: ServerProcess) -> None:
    channel = unique()
    async with httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT) as http:
        start = await start_cursor(http, channel)
        params = {"channel": channel, "cursor": start, "wait": "30"}
        waiting = asyncio.create_task(poll(http, params))
        await ApiClient(http, API_KEY).wait_for_subscribers(channel, 1)
        stopping = asyncio.create_task(asyncio.to_thread(server.stop, signal.SIGTERM))
        answer = await asyncio.wait_for(waiting, ANSWER_BOUND_S)
        exit_code = await stopping
    assert answer["publications"] == []
    assert answer["cursor"] == start
    assert answer["recovered"] is True
    assert exit_code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after shutdown


# -- paging and merging


async def test_paging_250_publications_by_100_chains_cursors_without_gaps_or_repeats(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    start = await start_cursor(http, channel)
    await api.publish_many(channel, 250)
    pages = []
    cursor = start
    for _ in range(4):
        answer = await poll(http, {"channel": channel, "cursor": cursor, "limit": "100"})
        pages.append(offsets(answer))
        cursor = answer["cursor"]
    default_limit = await poll(http, {"channel": channel, "cursor": start})
    assert [len(page) for page in pages] == [100, 100, 50, 0]
    assert [offset for page in pages for offset in page] == list(range(1, 251))
    assert len(offsets(default_limit)) == 100


async def test_two_channels_are_merged_by_time_so_a_quiet_one_is_not_starved(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    busy, quiet = unique(), unique()
    # The quiet channel is listed first: on equal timestamps it comes first, so its one
    # publication, made after busy's 60th, is within the first 61 of the merge.
    start = await start_cursor(http, quiet, busy)
    await api.publish_many(busy, 60)
    await api.publish(quiet, {"quiet": 1})
    await api.publish_many(busy, 90, start=61)
    pages: list[dict[str, Any]] = []
    cursor = start
    while not pages or pages[-1]["publications"]:
        pages.append(await poll(http, {"channel": [quiet, busy], "cursor": cursor, "limit": "100"}))
        cursor = pages[-1]["cursor"]
    merged = [p for page in pages for p in page["publications"]]
    assert len(pages[0]["publications"]) == 100
    assert offsets(pages[0], quiet) == [1]
    assert [p["offset"] for p in merged if p["channel"] == busy] == list(range(1, 151))
    assert [p["offset"] for p in merged if p["channel"] == quiet] == [1]
    timestamps = [p["ts"] for p in merged]
    assert timestamps == sorted(timestamps)


async def test_since_positions_resume_each_channel_from_its_own_position(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    a, b = unique(), unique()
    epoch = (await api.publish(a, {"n": 1}))["epoch"]
    await api.publish_many(a, 4, start=2)  # a: 1..5
    await api.publish_many(b, 3)  # b: 1..3
    params = {"channel": [a, b], "since": [f"{epoch}:3", f"{epoch}:1"]}
    answer = await poll(http, params)
    await api.publish(b, {"n": 4})
    after = await poll(http, {"channel": [a, b], "cursor": answer["cursor"]})
    assert offsets(answer, a) == [4, 5]
    assert offsets(answer, b) == [2, 3]
    assert answer["recovered"] is True
    assert [(p["channel"], p["offset"]) for p in after["publications"]] == [(b, 4)]


async def test_poll_from_an_evicted_position_says_recovered_false_with_the_current_cursor(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique("small")  # history_size 5
    epoch = (await api.publish(channel, {"n": 1}))["epoch"]
    await api.publish_many(channel, 9, start=2)
    gap = await poll(http, {"channel": channel, "since": f"{epoch}:2"})
    await api.publish(channel, {"n": 11})
    after = await poll(http, {"channel": channel, "cursor": gap["cursor"]})
    assert gap["publications"] == []
    assert gap["recovered"] is False
    assert offsets(after) == [11]  # the cursor was the head, 10
    assert after["recovered"] is True


# -- positions (1.1): where the answer leaves each channel, and whether it was recovered


def positions_of(answer: dict[str, Any]) -> dict[str, tuple[str, int, bool]]:
    """``positions`` as ``{channel: (epoch, offset, recovered)}``."""
    positions: dict[str, dict[str, Any]] = answer["positions"]
    for position in positions.values():
        assert set(position) == {"epoch", "offset", "recovered"}, position
    return {c: (p["epoch"], p["offset"], p["recovered"]) for c, p in positions.items()}


@pytest.mark.parametrize("wait", ["0", "5"])
async def test_positions_tell_the_recovered_channel_from_the_gap_channel(
    http: httpx.AsyncClient, api: ApiClient, wait: str
) -> None:
    kept, lost = unique(), unique("small")  # small: history_size 5
    epoch = (await api.publish(kept, {"n": 1}))["epoch"]
    await api.publish(kept, {"n": 2})
    await api.publish_many(lost, 10)  # lost keeps 6..10
    params = {"channel": [kept, lost], "since": [f"{epoch}:0", f"{epoch}:2"], "wait": wait}
    answer = await poll(http, params)
    assert offsets(answer, kept) == [1, 2]
    assert offsets(answer, lost) == []
    assert answer["recovered"] is False  # not every channel was
    assert positions_of(answer) == {kept: (epoch, 2, True), lost: (epoch, 10, False)}


async def test_positions_of_a_quiet_channel_stay_put_through_since_and_cursor(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    busy, quiet = unique(), unique()
    epoch = (await api.publish(busy, {"n": 1}))["epoch"]
    await api.publish(quiet, {"n": 1})
    since = {"channel": [busy, quiet], "since": [f"{epoch}:0", f"{epoch}:1"]}
    first = await poll(http, since)
    await api.publish(busy, {"n": 2})
    by_cursor = await poll(http, {"channel": [busy, quiet], "cursor": first["cursor"]})
    # Asked again the same way: answered from the node's watches (the native fast path).
    again = await poll(http, {"channel": [busy, quiet], "cursor": by_cursor["cursor"]})
    assert positions_of(first) == {busy: (epoch, 1, True), quiet: (epoch, 1, True)}
    assert offsets(by_cursor) == [2]
    assert positions_of(by_cursor) == {busy: (epoch, 2, True), quiet: (epoch, 1, True)}
    assert positions_of(again) == positions_of(by_cursor)
    assert again["recovered"] is True


async def test_positions_say_a_channel_asked_without_a_position_was_not_recovered(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    given, new = unique(), unique()
    epoch = (await api.publish(given, {"n": 1}))["epoch"]
    await api.publish_many(new, 3)
    cursor = (await poll(http, {"channel": given, "since": f"{epoch}:0"}))["cursor"]
    answer = await poll(http, {"channel": [given, new], "cursor": cursor})
    assert answer["recovered"] is False
    assert positions_of(answer) == {given: (epoch, 1, True), new: (epoch, 3, False)}


# -- ETag


async def test_etag_is_the_quoted_cursor_and_if_none_match_with_it_answers_304(
    http: httpx.AsyncClient, api: ApiClient
) -> None:
    channel = unique()
    start = await start_cursor(http, channel)
    await api.publish(channel, {"n": 1})
    response = await http.get("/poll", params={"channel": channel, "cursor": start})
    current = response.json()["cursor"]
    assert response.headers["etag"] == f'"{current}"'

    async def conditional(cursor: str, etag: str) -> httpx.Response:
        return await http.get(
            "/poll", params={"channel": channel, "cursor": cursor}, headers={"If-None-Match": etag}
        )

    not_modified = await conditional(current, f'"{current}"')
    old_tag = await conditional(start, f'"{start}"')
    current_cursor_old_tag = await conditional(current, f'"{start}"')
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["etag"] == f'"{current}"'
    assert old_tag.status_code == 200
    assert offsets(old_tag.json()) == [1]
    assert current_cursor_old_tag.status_code == 200
    assert current_cursor_old_tag.json()["publications"] == []


# -- refused requests


async def test_corrupted_cursor_is_refused_with_bad_request(http: httpx.AsyncClient) -> None:
    channel = unique()
    cursor = await start_cursor(http, channel)
    middle = len(cursor) // 2
    flipped = cursor[:middle] + ("B" if cursor[middle] != "B" else "C") + cursor[middle + 1 :]
    for variant in (flipped, cursor[:-3], cursor + "A", "not-a-cursor", "%%%", "a" * 5000):
        response = await http.get("/poll", params={"channel": channel, "cursor": variant})
        assert response.status_code == 400, (variant, response.text)
        assert error_code(response) == "bad_request"


@pytest.mark.parametrize(
    "extra",
    [
        {"wait": "61"},
        {"wait": "-1"},
        {"wait": "1.5"},
        {"wait": "soon"},
        {"limit": "0"},
        {"limit": "1001"},
        {"limit": "many"},
        {"since": "e:1", "cursor": "abc"},
        {"since": ["e:1", "e:2"]},
        {"since": "e"},
    ],
    ids=[
        "wait-61",
        "wait-negative",
        "wait-fraction",
        "wait-word",
        "limit-0",
        "limit-1001",
        "limit-word",
        "since-and-cursor",
        "since-count",
        "since-without-offset",
    ],
)
async def test_out_of_range_or_malformed_parameters_are_refused_with_bad_request(
    http: httpx.AsyncClient, extra: dict[str, str | list[str]]
) -> None:
    response = await http.get("/poll", params={"channel": unique(), **extra})
    assert response.status_code == 400, response.text
    assert error_code(response) == "bad_request"


async def test_limits_at_the_edges_are_accepted(http: httpx.AsyncClient, api: ApiClient) -> None:
    channel = unique()
    start = await start_cursor(http, channel)
    await api.publish(channel, {"n": 1})  # so that even wait=60 answers at once
    for extra in ({"limit": "1"}, {"limit": "1000"}, {"wait": "0"}, {"wait": "60"}):
        answer = await poll(http, {"channel": channel, "cursor": start, **extra})
        assert offsets(answer) == [1]


async def test_poll_without_channel_is_refused_with_bad_request(http: httpx.AsyncClient) -> None:
    response = await http.get("/poll")
    assert response.status_code == 400
    assert error_code(response) == "bad_request"


@pytest.mark.parametrize("name", ["wait", "limit"])
async def test_non_ascii_digits_in_wait_or_limit_are_refused_with_bad_request(
    http: httpx.AsyncClient, name: str
) -> None:
    response = await http.get("/poll", params={"channel": unique(), name: "²"})
    assert response.status_code == 400, response.text
    assert error_code(response) == "bad_request"


async def test_token_policy_channel_without_token_is_forbidden(http: httpx.AsyncClient) -> None:
    response = await http.get("/poll", params={"channel": unique("secret")})
    assert response.status_code == 403
    assert error_code(response) == "permission_denied"


# -- origins (docs/protocol.md §8)


async def test_listed_origin_may_poll_and_read_the_etag(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/poll", params={"channel": unique()}, headers={"Origin": ALLOWED_ORIGIN}
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "etag" in exposed


async def test_unlisted_origin_may_not_poll(http: httpx.AsyncClient) -> None:
    response = await http.get(
        "/poll", params={"channel": unique()}, headers={"Origin": "https://evil.example.com"}
    )
    preflight = await http.options(
        "/poll",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert response.status_code == 403
    assert error_code(response) == "permission_denied"
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight.headers


async def test_preflight_from_a_listed_origin_allows_if_none_match(
    http: httpx.AsyncClient,
) -> None:
    response = await http.options(
        "/poll",
        headers={
            "Origin": ALLOWED_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    )
    assert 200 <= response.status_code < 300
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "if-none-match" in response.headers["access-control-allow-headers"].lower()
