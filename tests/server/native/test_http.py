"""The native server's HTTP/1.1 at its edges (issue #11, items 16-19): answers in
request order even when what follows a request is refused, never running a request
it refused; HEAD without a body; the handshake and head rules of RFC 9112 and RFC
6455; the JSON error shape of its own refusals; paths logged escaped; a client that
leaves while its answer is pending is routine, not an error."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.server.native.conftest import Served
from tests.support.api import ApiClient
from tests.support.raw_http import (
    API_KEY,
    TIMEOUT_S,
    RawConnection,
    connect,
    publish_request,
    upgrade,
)
from tidings.server.native import http as native_http


@pytest.fixture
async def api(served: Served) -> AsyncIterator[ApiClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
        yield ApiClient(http, API_KEY)


async def history_offsets(api: ApiClient, channel: str) -> list[int]:
    response = await api.http.get("/api/history", params={"channel": channel}, headers=api.headers)
    assert response.status_code == 200, response.text
    return [publication["offset"] for publication in response.json()["publications"]]


async def answers_until_closed(conn: RawConnection) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response the server sends before it closes the connection."""
    async with asyncio.timeout(TIMEOUT_S):
        received = await conn.reader.read()  # until the server closes
    conn.close()
    replay = asyncio.StreamReader()
    replay.feed_data(received)
    replay.feed_eof()
    parsed = RawConnection(replay, conn.writer)
    answers = []
    while not replay.at_eof():
        answers.append(await parsed.response())
    return answers


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.levelno >= logging.ERROR]


# -- what follows a request ------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "refused"),
    [
        (b"garbage that is no request\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400),
        (b"\x00\x01\x02\xff", 400),
        (b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: nine\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\n\r\n", 400),  # no Host
    ],
)
async def test_a_publish_followed_by_what_is_refused_is_answered_first_and_stored_once(
    served: Served,
    api: ApiClient,
    caplog: pytest.LogCaptureFixture,
    tail: bytes,
    refused: int,
) -> None:
    channel = "room:tail"
    conn = await connect(served.port)
    await conn.send(publish_request(channel, "kept") + tail)
    answers = await answers_until_closed(conn)
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, refused]  # in request order, then the close
    assert answers[1][1]["connection"] == "close"
    assert json.loads(answers[0][2])["offset"] == 1
    assert await history_offsets(api, channel) == [1]  # stored because answered 200
    assert errors_logged(caplog) == []


async def test_a_request_answered_with_an_error_is_never_run(
    served: Served, api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    channel = "room:never"
    # The second publish's head is malformed: it gets the 400 and must not be stored.
    bad = publish_request(channel, "refused").replace(b"Host: x\r\n", b"Host: x\r\nBad Line\r\n")
    conn = await connect(served.port)
    await conn.send(publish_request(channel, "kept") + bad + publish_request(channel, "after"))
    statuses = [status for status, _, _ in await answers_until_closed(conn)]
    assert statuses == [200, 400]
    assert await history_offsets(api, channel) == [1]
    assert errors_logged(caplog) == []


async def test_bytes_after_connection_close_are_not_a_request(
    served: Served, api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    channel = "room:last"
    last = publish_request(channel, "last").replace(
        b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n"
    )
    conn = await connect(served.port)
    await conn.send(last + publish_request(channel, "ignored") + b"and some garbage")
    answers = await answers_until_closed(conn)
    assert [(status, headers["connection"]) for status, headers, _ in answers] == [(200, "close")]
    assert await history_offsets(api, channel) == [1]
    assert errors_logged(caplog) == []


async def test_a_refusal_waits_behind_a_request_in_flight(served: Served, api: ApiClient) -> None:
    channel = "room:behind"
    conn = await connect(served.port)
    # A long poll is in flight when the garbage arrives: its answer comes first.
    await conn.send(b"GET /poll?channel=%b HTTP/1.1\r\nHost: x\r\n\r\n" % channel.encode())
    first = await conn.response()
    cursor = json.loads(first[2])["cursor"]
    await conn.send(
        b"GET /poll?channel=%b&cursor=%b&wait=30 HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n"
        % (channel.encode(), cursor.encode())
    )
    await api.publish(channel, "wakes it")
    answers = await answers_until_closed(conn)
    assert [status for status, _, _ in answers] == [200, 400]
    assert [p["data"] for p in json.loads(answers[0][2])["publications"]] == ["wakes it"]


async def test_a_request_held_back_behind_a_long_poll_is_served_once_it_is_answered(
    served: Served, api: ApiClient
) -> None:
    channel = "room:held"
    position = await api.publish(channel, "before")
    since = f"{position['epoch']}:{position['offset']}"
    conn = await connect(served.port)
    # Reading pauses inside the publish's body (over 64 KiB waiting behind the long poll).
    conn.writer.write(
        b"GET /poll?channel=%b&since=%b&wait=30 HTTP/1.1\r\nHost: x\r\n\r\n%b"
        % (channel.encode(), since.encode(), publish_request(channel, "y" * 1_000_000))
    )
    await api.publish(channel, "wakes it")
    answers = [await conn.response() for _ in range(2)]
    assert [status for status, _, _ in answers] == [200, 413]  # the publish is read, served
    assert json.loads(answers[1][2])["error"]["code"] == "message_too_large"
    conn.close()


# -- HEAD -------------------------------------------------------------------------------


async def test_head_sse_gets_the_stream_headers_only_and_opens_no_subscription(
    served: Served, api: ApiClient
) -> None:
    conn = await connect(served.port)
    await conn.send(b"HEAD /sse?channel=room:head HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"content-type: text/event-stream" in head.lower()
    assert await api.subscribers("room:head") == 0
    # No body came: the next answer follows the head at once on the same connection.
    await conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await conn.response())[2] == b'{"status":"ok"}'
    conn.close()


# -- the rules of the head ---------------------------------------------------------------


@pytest.mark.parametrize("expect", [b"100-Continue", b"100-CONTINUE  ", b"100-continue\t"])
async def test_expect_100_continue_is_answered_in_any_case_and_with_trailing_space(
    served: Served, expect: bytes
) -> None:
    conn = await connect(served.port)
    body = json.dumps({"channel": "room:expect", "data": 1}).encode()
    await conn.send(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %b\r\n"
        b"Content-Type: application/json\r\nExpect: %b\r\nContent-Length: %d\r\n\r\n"
        % (API_KEY.encode(), expect, len(body))
    )
    interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await conn.send(body)
    assert (await conn.response())[0] == 200
    conn.close()


@pytest.mark.parametrize(
    "handshake",
    [
        # Trailing whitespace is no part of a field value (RFC 9112 §5).
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket \r\nConnection: Upgrade \r\n"
        b"Sec-WebSocket-Key: %b \r\nSec-WebSocket-Version: 13 \r\n\r\n",
        # A list field may be split over two lines (RFC 9110 §5.3).
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: %b\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ],
)
async def test_a_valid_handshake_in_its_less_common_forms_is_accepted(
    served: Served, handshake: bytes
) -> None:
    _, key = upgrade()
    conn = await connect(served.port)
    await conn.send(handshake % key)
    assert (await conn.response())[0] == 101
    conn.close()


def _handshake(
    *, version: bytes = b"HTTP/1.1", extra: bytes = b"", ws_version: bytes = b"13"
) -> bytes:
    request, _ = upgrade(version=ws_version, extra=extra)
    return request.replace(b"HTTP/1.1", version, 1)


@pytest.mark.parametrize(
    ("request_bytes", "status", "header"),
    [
        (_handshake(extra=b"Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"), 400, None),
        (_handshake(version=b"HTTP/1.0"), 400, None),
        (_handshake(ws_version=b"8"), 426, ("sec-websocket-version", "13")),
        (b"GET /health HTTP/1.1\r\n\r\n", 400, None),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400, None),
        (b"GET /" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, None),
        (b"FROB /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, None),
        (b"PROPFIND /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, None),
    ],
)
async def test_a_request_breaking_the_rules_of_the_head_gets_its_status(
    served: Served, request_bytes: bytes, status: int, header: tuple[str, str] | None
) -> None:
    conn = await connect(served.port)
    await conn.send(request_bytes)
    answer_status, headers, body = await conn.response()
    assert answer_status == status
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "bad_request"
    if header is not None:
        assert headers[header[0]] == header[1]
    assert await conn.closed_by_server()


async def test_an_http_1_0_request_without_host_is_served(served: Served) -> None:
    conn = await connect(served.port)
    await conn.send(b"GET /health HTTP/1.0\r\n\r\n")
    assert (await conn.response())[0] == 200
    conn.close()


async def test_a_body_over_the_limit_gets_413_in_the_json_error_shape(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native_http, "MAX_BODY_BYTES", 1000)
    conn = await connect(served.port)
    await conn.send(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")
    conn.writer.write(b"x" * 2000)
    status, headers, body = await conn.response()
    assert (status, headers["content-type"]) == (413, "application/json")
    error = json.loads(body)["error"]
    assert error["code"] == "message_too_large"
    assert "1,000" in error["message"]
    conn.close()


async def test_a_body_announced_over_the_limit_is_refused_before_the_100_continue(
    served: Served,
) -> None:
    conn = await connect(served.port)
    await conn.send(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 9000000\r\n\r\n"
    )
    status, headers, body = await conn.response()  # no interim 100 first
    assert (status, headers["connection"]) == (413, "close")
    assert json.loads(body)["error"]["code"] == "message_too_large"
    conn.close()


# -- logging -------------------------------------------------------------------------------


async def test_a_failing_request_is_logged_with_its_path_escaped(
    served: Served, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(served.server.app, "_router", failing)
    conn = await connect(served.port)
    await conn.send(b"GET /x%0D%0AERROR%20forged HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await conn.response())[0] == 500
    conn.close()
    [record] = errors_logged(caplog)
    assert "\r" not in record.getMessage()
    assert "\n" not in record.getMessage()


async def test_a_client_leaving_its_long_poll_logs_no_error(
    served: Served, api: ApiClient, caplog: pytest.LogCaptureFixture
) -> None:
    channel = "room:abandoned"
    position = await api.publish(channel, 1)
    since = f"{position['epoch']}:{position['offset']}"
    conn = await connect(served.port)
    # A channel not polled before: served through the app, parked for a second.
    await conn.send(
        b"GET /poll?channel=%b&since=%b&wait=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        % (channel.encode(), since.encode())
    )
    async with asyncio.timeout(TIMEOUT_S):
        # The server's own state: no event to await.
        while not any(isinstance(c._cycle, asyncio.Task) for c in served.server.connections):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    [poll] = [c._cycle for c in served.server.connections if isinstance(c._cycle, asyncio.Task)]
    conn.close()  # the client leaves; the poll answers a second later, to no one
    await asyncio.wait_for(poll, TIMEOUT_S)
    assert errors_logged(caplog) == []
