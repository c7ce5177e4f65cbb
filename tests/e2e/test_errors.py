"""Errors and limits (docs/protocol.md §7): each error path answers its exact code and HTTP
status with a message saying what was wrong, frames that cannot be answered close the
connection with the right code, and no client — hostile or slow — harms another."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.e2e.conftest import api_client, api_headers, goodbye_of, serving
from tests.support.raw_ws import stalled_client
from tests.support.server import ServerProcess
from tests.support.ws import Frame, WsClient, ws_client

MAX_FRAME_BYTES: Final = 65_536 + 4096  # the largest max_data_size plus the envelope
# What either server backend reads of one WebSocket message (Settings.max_ws_message_bytes).
MAX_MESSAGE_BYTES: Final = 4 * MAX_FRAME_BYTES
SLOW_CONSUMER_PUBLICATIONS: Final = 200
SLOW_CONSUMER_DATA_BYTES: Final = 50_000


@pytest.fixture
async def http(node: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=30.0) as client:
        yield client


def error_of(response: httpx.Response, status: int, code: str) -> str:
    """Check an HTTP error answer; return its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == code, body
    message: str = body["error"]["message"]
    return message


def reply_error(reply: Frame, code: str) -> str:
    """Check a WebSocket error reply; return its message."""
    assert "error" in reply, reply
    assert reply["error"]["code"] == code, reply
    message: str = reply["error"]["message"]
    return message


async def assert_still_open(client: WsClient) -> None:
    """The connection still answers commands."""
    assert await client.result("ping") == {}


# -- the server API -------------------------------------------------------------------------


async def test_api_body_that_is_not_json_is_bad_request(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/publish",
        content=b'{"channel": "room:1", "data": ',
        headers={**api_headers(), "Content-Type": "application/json"},
    )
    assert "not JSON" in error_of(response, 400, "bad_request")


async def test_api_body_with_an_unknown_field_names_it(http: httpx.AsyncClient) -> None:
    body = {"channel": "room:1", "data": 1, "colour": "red"}
    response = await http.post("/api/publish", json=body, headers=api_headers())
    assert "unknown field `colour`" in error_of(response, 400, "bad_request")


async def test_api_body_missing_a_field_names_it(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/publish", json={"channel": "room:1"}, headers=api_headers())
    assert "`data`" in error_of(response, 400, "bad_request")


async def test_api_body_with_a_wrong_type_names_the_field_and_the_type(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/api/publish", json={"channel": 7, "data": 1}, headers=api_headers()
    )
    message = error_of(response, 400, "bad_request")
    assert "`$.channel`" in message
    assert "str" in message


async def test_api_publish_to_an_invalid_channel_says_which_characters_are_allowed(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/api/publish", json={"channel": "room 1", "data": 1}, headers=api_headers()
    )
    message = error_of(response, 400, "bad_request")
    assert "' '" in message
    assert "allowed are" in message


async def test_api_publish_of_too_large_data_is_413_with_size_and_limit(
    http: httpx.AsyncClient,
) -> None:
    data = "x" * 2000  # tiny allows 1 KiB
    response = await http.post(
        "/api/publish", json={"channel": "tiny:1", "data": data}, headers=api_headers()
    )
    message = error_of(response, 413, "message_too_large")
    assert f"{len(json.dumps(data)):,} bytes" in message
    assert "1,024" in message


async def test_api_request_body_over_the_limit_is_413(http: httpx.AsyncClient) -> None:
    body = {"channel": "room:1", "data": "x" * 200_000}
    response = await http.post("/api/publish", json=body, headers=api_headers())
    assert "request body" in error_of(response, 413, "message_too_large")


@pytest.mark.parametrize("count", [0, 1001], ids=["no channel", "1001 channels"])
async def test_api_broadcast_to_no_channel_or_too_many_is_bad_request(
    http: httpx.AsyncClient, count: int
) -> None:
    body = {"channels": [f"room:b{n}" for n in range(count)], "data": 1}
    response = await http.post("/api/broadcast", json=body, headers=api_headers())
    assert "`$.channels`" in error_of(response, 400, "bad_request")


async def test_api_call_without_a_key_is_401_and_asks_for_a_bearer(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("/api/publish", json={"channel": "room:1", "data": 1})
    assert "Bearer" in error_of(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_api_call_with_a_wrong_key_is_401_and_does_not_echo_it(
    http: httpx.AsyncClient,
) -> None:
    wrong = "wrong-key-8c1f"
    response = await http.get("/api/channels", headers={"Authorization": f"Bearer {wrong}"})
    assert wrong not in error_of(response, 401, "unauthorized")
    assert wrong not in response.text


async def test_api_history_with_a_corrupted_epoch_is_bad_request(
    http: httpx.AsyncClient,
) -> None:
    query = {"channel": "room:1", "since_epoch": "not an epoch!", "since_offset": "1"}
    response = await http.get("/api/history", params=query, headers=api_headers())
    assert "epoch must be" in error_of(response, 400, "bad_request")


async def test_api_history_with_half_a_position_asks_for_both_parts(
    http: httpx.AsyncClient,
) -> None:
    query = {"channel": "room:1", "since_epoch": "abc"}
    response = await http.get("/api/history", params=query, headers=api_headers())
    assert "since_offset" in error_of(response, 400, "bad_request")


@pytest.mark.parametrize("limit", ["abc", "-1", "1001"])
async def test_api_history_with_an_invalid_limit_says_what_is_accepted(
    http: httpx.AsyncClient, limit: str
) -> None:
    query = {"channel": "room:1", "limit": limit}
    response = await http.get("/api/history", params=query, headers=api_headers())
    assert "0 to 1000" in error_of(response, 400, "bad_request")


async def test_api_history_with_a_non_ascii_digit_limit_is_bad_request_not_500(
    http: httpx.AsyncClient,
) -> None:
    query = {"channel": "room:1", "limit": "²"}  # str.isdigit() is true, int() refuses it
    response = await http.get("/api/history", params=query, headers=api_headers())
    assert "limit" in error_of(response, 400, "bad_request")


async def test_api_presence_where_presence_is_off_is_permission_denied(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/api/presence", params={"channel": "news"}, headers=api_headers())
    assert "presence is off" in error_of(response, 403, "permission_denied")


async def test_api_disconnect_with_a_close_code_outside_4000_4999_is_bad_request(
    http: httpx.AsyncClient,
) -> None:
    body = {"user": "alice", "code": 1000}
    response = await http.post("/api/disconnect", json=body, headers=api_headers())
    assert "`$.code`" in error_of(response, 400, "bad_request")


# -- WebSocket command errors: answered, and the connection stays open ----------------------


async def test_websocket_publish_of_too_large_data_is_message_too_large(
    node: ServerProcess,
) -> None:
    data = "x" * 66_000  # room allows the default 64 KiB; the frame is under its limit
    async with ws_client(node.ws_url) as client:
        reply = await client.request("publish", channel="room:big", data=data)
        await assert_still_open(client)
    message = reply_error(reply, "message_too_large")
    assert "66,002 bytes" in message
    assert "65,536" in message


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        ({"epoch": "not an epoch!", "offset": 1}, "epoch must be"),
        ({"epoch": "e" * 33, "offset": 1}, "epoch must be"),
        ({"epoch": "abc", "offset": -1}, "offset must be"),
        ({"epoch": "abc"}, "`offset`"),
    ],
)
async def test_websocket_subscribe_with_a_corrupted_since_is_bad_request(
    node: ServerProcess, since: dict[str, Any], expected: str
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("subscribe", channel="room:since", since=since)
        await assert_still_open(client)
    assert expected in reply_error(reply, "bad_request")


async def test_websocket_publish_where_clients_may_not_is_permission_denied(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("publish", channel="news", data=1)
        await assert_still_open(client)
    assert "client_publish" in reply_error(reply, "permission_denied")


async def test_websocket_subscribe_to_a_token_namespace_unlisted_is_permission_denied(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("subscribe", channel="secret:plans")
        await assert_still_open(client)
    assert "token lists" in reply_error(reply, "permission_denied")


async def test_websocket_subscribe_to_a_user_channel_anonymously_is_permission_denied(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("subscribe", channel="user:alice")
    assert "anonymous" in reply_error(reply, "permission_denied")


async def test_websocket_presence_where_presence_is_off_is_permission_denied(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("presence", channel="news")
    assert "presence is off" in reply_error(reply, "permission_denied")


async def test_websocket_unknown_op_is_bad_request_listing_the_ops(node: ServerProcess) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("teleport", channel="room:1")
        await assert_still_open(client)
    message = reply_error(reply, "bad_request")
    assert "teleport" in message
    assert "subscribe" in message


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"op": "subscribe", "channel": 5}, "`$.channel`"),
        ({"op": "history", "channel": "room:1", "limit": "ten"}, "`$.limit`"),
        ({"op": "history", "channel": "room:1", "limit": 5000}, "`$.limit`"),
        ({"op": "publish", "channel": "room:1", "data": 1, "key": 42}, "`$.key`"),
        ({"op": "publish", "channel": "room:1"}, "`data`"),
        ({"op": "subscribe", "channel": "room:1", "since": [1, 2]}, "`$.since`"),
        ({"op": "ping", "extra": True}, "`extra`"),
    ],
)
async def test_websocket_command_with_a_wrong_field_names_the_field(
    node: ServerProcess, fields: dict[str, Any], expected: str
) -> None:
    async with ws_client(node.ws_url) as client:
        await client.send_raw(json.dumps({"id": 77, **fields}))
        reply = await client.next_push()
        await assert_still_open(client)
    assert reply["id"] == 77
    assert expected in reply_error(reply, "bad_request")


async def test_websocket_subscribing_twice_is_bad_request(node: ServerProcess) -> None:
    async with ws_client(node.ws_url) as client:
        await client.result("subscribe", channel="room:twice")
        reply = await client.request("subscribe", channel="room:twice")
    assert "already subscribed" in reply_error(reply, "bad_request")


async def test_websocket_subscribe_to_an_invalid_channel_says_what_is_allowed(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("subscribe", channel="x" * 256)
    assert "at most 255" in reply_error(reply, "bad_request")


# -- frames that cannot be answered close the connection ------------------------------------


@pytest.mark.parametrize(
    "frame",
    [
        '{"op": "ping"}',
        '{"op": "ping", "id": "seven"}',
        '{"op": "ping", "id": 1.5}',
        "[1, 2, 3]",
        "not json at all",
        "",
    ],
    ids=["no id", "string id", "float id", "array", "garbage", "empty"],
)
async def test_frame_that_is_not_an_object_with_an_integer_id_closes_with_4008(
    node: ServerProcess, frame: str
) -> None:
    async with ws_client(node.ws_url) as client:
        await client.send_raw(frame)
        push, code = await goodbye_of(client)
    assert push == {
        "push": "disconnect",
        "code": 4008,
        "reason": "a frame must be a JSON object with an integer id and an op",
        "reconnect": False,
    }
    assert code == 4008


async def test_binary_frame_closes_with_4008(node: ServerProcess) -> None:
    async with ws_client(node.ws_url) as client:
        await client.connection.send(b'{"op": "ping", "id": 1}')
        push, code = await goodbye_of(client)
    assert (push["push"], push["code"], push["reconnect"]) == ("disconnect", 4008, False)
    assert "text" in push["reason"]
    assert code == 4008


async def test_frame_over_the_size_limit_closes_with_4009(node: ServerProcess) -> None:
    frame = json.dumps({"op": "ping", "id": 1, "pad": "x" * MAX_FRAME_BYTES})
    async with ws_client(node.ws_url) as client:
        await client.send_raw(frame)
        push, code = await goodbye_of(client)
    assert push == {
        "push": "disconnect",
        "code": 4009,
        "reason": f"frame over {MAX_FRAME_BYTES:,} bytes",
        "reconnect": False,
    }
    assert code == 4009


async def test_frame_over_the_size_limit_in_utf8_bytes_closes_with_4009(
    node: ServerProcess,
) -> None:
    frame = json.dumps({"op": "ping", "id": 1, "pad": "€" * 25_000}, ensure_ascii=False)
    assert len(frame) < MAX_FRAME_BYTES < len(frame.encode())
    async with ws_client(node.ws_url) as client:
        await client.send_raw(frame)
        push = await client.next_push()
    assert (push.get("push"), push.get("code")) == ("disconnect", 4009), push


async def test_a_message_up_to_the_message_limit_is_read_and_refused_with_4009(
    node: ServerProcess,
) -> None:
    # Read whole by either backend (not cut with 1009): the session refuses it itself.
    frame = json.dumps({"op": "ping", "id": 1, "pad": "x" * (MAX_MESSAGE_BYTES - 100)})
    assert MAX_FRAME_BYTES < len(frame) <= MAX_MESSAGE_BYTES
    async with ws_client(node.ws_url) as client:
        await client.send_raw(frame)
        push, code = await goodbye_of(client)
    assert (push.get("push"), push.get("code")) == ("disconnect", 4009), push
    assert code == 4009


async def test_a_message_over_the_message_limit_is_cut_with_1009(node: ServerProcess) -> None:
    frame = json.dumps({"op": "ping", "id": 1, "pad": "x" * MAX_MESSAGE_BYTES})
    async with ws_client(node.ws_url) as client:
        await client.send_raw(frame)
        assert await client.wait_closed() == 1009


# -- limits ---------------------------------------------------------------------------------


async def test_commands_past_the_rate_limit_are_too_many_requests(config_file: Path) -> None:
    env = {"TIDINGS_COMMAND_RATE": "5", "TIDINGS_COMMAND_BURST": "5"}
    with serving(config_file, env) as server:
        async with ws_client(server.ws_url) as client:
            replies = await asyncio.gather(*(client.request("ping") for _ in range(50)))
            after = await client.request("ping")  # answered either way: still open
    answered = [reply for reply in replies if "result" in reply]
    limited = [reply for reply in replies if "error" in reply]
    assert len(answered) >= 5
    assert limited
    for reply in limited:
        assert "5 commands per second" in reply_error(reply, "too_many_requests")
    assert "result" in after or after["error"]["code"] == "too_many_requests"


async def test_subscriptions_past_the_per_connection_limit_are_too_many_requests(
    config_file: Path,
) -> None:
    with serving(config_file, {"TIDINGS_MAX_CHANNELS_PER_CONNECTION": "2"}) as server:
        async with ws_client(server.ws_url) as client:
            await client.result("subscribe", channel="room:1")
            await client.result("subscribe", channel="room:2")
            reply = await client.request("subscribe", channel="room:3")
            await assert_still_open(client)
    assert "at most 2 subscriptions" in reply_error(reply, "too_many_requests")


async def test_connection_past_the_connection_limit_is_closed_with_4501(
    config_file: Path,
) -> None:
    with serving(config_file, {"TIDINGS_MAX_CONNECTIONS": "2"}) as server:
        async with ws_client(server.ws_url) as first, ws_client(server.ws_url) as second:
            await assert_still_open(first)  # answered: registered
            await assert_still_open(second)
            async with ws_client(server.ws_url) as third:
                push, code = await goodbye_of(third)
            await assert_still_open(first)
    assert (push["push"], push["code"], push["reconnect"]) == ("disconnect", 4501, True)
    assert "limit" in push["reason"]
    assert code == 4501


# -- isolation ------------------------------------------------------------------------------

HOSTILE_FRAMES: Final = [
    "[" * 30_000 + "]" * 30_000,
    '{"op":"ping","id":1,"x":' + "[" * 30_000 + "]" * 30_000 + "}",
    '{"op":"publish","id":2,"channel":"room:h","data":'
    + '{"a":' * 10_000
    + "1"
    + "}" * 10_000
    + "}",
    '{"op":"ping","id":3,"zz":"\u202e\U0001f600\ufeff\u200b\x00"}',
    '{"op":"subscribe","id":4,"channel":"room:\u0130\u212a\U0001d7d8"}',
    '{"op":"publish","id":5,"channel":"room:h","data":"\\ud800"}',
    '{"op":"publish","id":6,"channel":"room:h","data":1e400}',
    '{"op":"ping","id":99999999999999999999999}',
    '{"op":"ping","op":"subscribe","id":7}',
    '{"op":"ping","id":8} trailing',
    "\ufeff" + '{"op":"ping","id":9}',
    "\x00\x01\x02\x7f",
    "\u2028\u2029" * 1000,
    "{" * 60_000,
]


async def test_hostile_frames_never_affect_another_connected_client(node: ServerProcess) -> None:
    errors_before = sum(" ERROR " in line for line in node.log)
    outcomes: list[Frame] = []
    async with api_client(node) as api, ws_client(node.ws_url) as bystander:
        await bystander.result("subscribe", channel="room:calm")
        for n, frame in enumerate(HOSTILE_FRAMES, start=1):
            async with ws_client(node.ws_url) as hostile:
                await hostile.send_raw(frame)
                outcomes.append(await hostile.next_push())
            await api.publish("room:calm", {"n": n})
            [publication] = await bystander.publications(1)
            assert publication["data"] == {"n": n}
        await assert_still_open(bystander)
    # Each hostile frame was answered or closed its own connection as a protocol error;
    # none made the server fail (4599 internal) or log an error.
    for outcome in outcomes:
        if "push" in outcome:
            assert outcome["code"] == 4008, outcome
        else:
            assert "error" in outcome or "result" in outcome, outcome
    assert sum(" ERROR " in line for line in node.log) == errors_before


async def test_slow_consumer_is_cut_with_4500_while_others_get_everything(
    config_file: Path,
) -> None:
    blob = "s" * SLOW_CONSUMER_DATA_BYTES
    with serving(config_file, {"TIDINGS_OUTBOUND_BUFFER": "64KiB"}) as server:
        async with (
            api_client(server) as api,
            ws_client(server.ws_url) as reader,
            stalled_client(server.ws_url) as slow,
        ):
            await slow.request({"op": "subscribe", "id": 1, "channel": "room:slow"})
            await reader.result("subscribe", channel="room:slow")
            received: list[Frame] = []
            for n in range(1, SLOW_CONSUMER_PUBLICATIONS + 1):
                # Publishing never waits for the stalled client (publish asserts a 200).
                await api.publish("room:slow", {"n": n, "blob": blob})
                received += await reader.publications(1)
            # Only now does the stalled client read what the server sent it.
            code = await slow.read_until_closed()
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                metrics = (await http.get("/metrics")).text
    assert [p["offset"] for p in received] == list(range(1, SLOW_CONSUMER_PUBLICATIONS + 1))
    pubs = [frame for frame in slow.frames if frame.get("push") == "pub"]
    # It got a gap-free prefix, then the goodbye: it resumes from its position later.
    assert [p["offset"] for p in pubs] == list(range(1, len(pubs) + 1))
    assert len(pubs) < SLOW_CONSUMER_PUBLICATIONS
    assert slow.frames[-1] == {
        "push": "disconnect",
        "code": 4500,
        "reason": "slow consumer",
        "reconnect": True,
    }
    assert code == 4500
    assert 'tidings_refusals_total{reason="slow_consumer"} 1.0' in metrics
    assert 'tidings_disconnects_total{code="4500"} 1.0' in metrics
    assert any("refused a slow consumer from 127.0.0.1:" in line for line in server.log)
