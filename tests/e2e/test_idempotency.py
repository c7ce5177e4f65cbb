"""Idempotent publish (docs/protocol.md §2.4): a repeated key in the same channel publishes
nothing and answers the original position, over the server API and over WebSocket.

"Delivered once" is observed without waiting for something not to happen: after the
repeats, a sentinel publication is made; a subscriber receives publications in offset
order, so if the very next one it gets is the sentinel, no repeat was delivered."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import JWT_SECRET, api_client, make_token, serving
from tests.support.api import ApiClient
from tests.support.server import ServerProcess
from tests.support.services import REDIS_HOST, REDIS_PORT, require_service
from tests.support.ws import ws_client


async def post(api: ApiClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.http.post(path, json=body, headers=api.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_api_publish_with_a_repeated_key_answers_the_original_position_once_delivered(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        await client.result("subscribe", channel="room:idem")
        body = {"channel": "room:idem", "data": {"v": "first"}, "key": "pay-1"}
        original = await post(api, "/api/publish", body)
        repeated = await post(api, "/api/publish", body)
        changed = await post(api, "/api/publish", {**body, "data": {"v": "second"}})
        sentinel = await api.publish("room:idem", {"v": "sentinel"})
        delivered = await client.publications(2)
        history = await client.result("history", channel="room:idem")
    # The retry is told it published nothing (docs/protocol.md §6).
    assert repeated == {**original, "duplicate": True}
    assert changed == repeated  # a retry with other data still publishes nothing
    assert sentinel["offset"] == original["offset"] + 1
    assert [(p["offset"], p["data"]) for p in delivered] == [
        (original["offset"], {"v": "first"}),
        (sentinel["offset"], {"v": "sentinel"}),
    ]
    assert delivered[0]["key"] == "pay-1"
    assert "key" not in delivered[1]
    assert [p["data"] for p in history["publications"]] == [{"v": "first"}, {"v": "sentinel"}]


async def test_websocket_publish_with_a_repeated_key_answers_the_original_position_once_delivered(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as publisher, ws_client(node.ws_url) as client:
        await client.result("subscribe", channel="room:wsidem")
        fields: dict[str, Any] = {"channel": "room:wsidem", "data": {"v": 1}, "key": "msg-9"}
        original = await publisher.result("publish", **fields)
        repeated = await publisher.result("publish", **fields)
        sentinel = await publisher.result("publish", channel="room:wsidem", data={"v": 2})
        delivered = await client.publications(2)
    assert repeated == original
    assert sentinel["offset"] == original["offset"] + 1
    assert [(p["offset"], p["data"], p.get("key")) for p in delivered] == [
        (original["offset"], {"v": 1}, "msg-9"),
        (sentinel["offset"], {"v": 2}, None),
    ]


def with_token(process: ServerProcess, user: str) -> str:
    """The node's ``/ws`` URL carrying a token of ``user``."""
    return f"{process.ws_url}?token={make_token(user)}"


@pytest.fixture(params=["memory", "sqlite", "redis"])
def keyed_node(
    request: pytest.FixtureRequest, config_file: Path, tmp_path: Path
) -> Iterator[ServerProcess]:
    """A node requiring tokens, on each broker whose key spaces are tested."""
    env = {"TIDINGS_JWT_SECRET": JWT_SECRET}
    data = tmp_path / "data" if request.param == "sqlite" else None
    if request.param == "redis":
        require_service(REDIS_HOST, REDIS_PORT, "Redis")
        # A prefix of its own: other tests share this Redis, so nothing is flushed.
        prefix = f"tidings-keyspaces-{secrets.token_hex(4)}"
        env["TIDINGS_BROKER"] = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix={prefix}"
    with serving(config_file, env, data=data) as process:
        yield process


async def test_client_and_server_keys_never_dedupe_against_each_other(
    keyed_node: ServerProcess,
) -> None:
    """#11.12: a client publishing first with the backend's key must not make the
    backend's publication vanish; each side's retry still repeats its own."""
    channel = "room:keyspaces"
    body = {"channel": channel, "key": "order-7"}
    async with (
        api_client(keyed_node) as api,
        ws_client(with_token(keyed_node, "alice")) as alice,
    ):
        by_client = await alice.result("publish", **body, data={"from": "alice"})
        by_server = await post(api, "/api/publish", {**body, "data": {"from": "server"}})
        server_retry = await post(api, "/api/publish", {**body, "data": {"from": "retry"}})
        history = await api.http.get(
            "/api/history", params={"channel": channel}, headers=api.headers
        )
    assert by_server["offset"] == by_client["offset"] + 1
    assert server_retry == {**by_server, "duplicate": True}
    assert [p["data"] for p in history.json()["publications"]] == [
        {"from": "alice"},
        {"from": "server"},
    ]


async def test_a_clients_key_repeats_for_its_user_across_connections_but_not_for_others(
    keyed_node: ServerProcess,
) -> None:
    channel = "room:userkeys"
    fields: dict[str, Any] = {"channel": channel, "key": "msg-1"}
    async with ws_client(with_token(keyed_node, "alice")) as alice:
        original = await alice.result("publish", **fields, data=1)
    # A reconnect of the same user: its retry repeats its own earlier publish.
    async with ws_client(with_token(keyed_node, "alice")) as alice_again:
        retried = await alice_again.result("publish", **fields, data=2)
    async with ws_client(with_token(keyed_node, "bob")) as bob:
        by_bob = await bob.result("publish", **fields, data=3)
    assert retried == original
    assert by_bob["offset"] == original["offset"] + 1


async def test_an_api_publish_for_a_client_is_in_that_users_key_space(
    keyed_node: ServerProcess,
) -> None:
    # What a relay sends for its clients (docs/protocol.md §6, §10).
    channel = "room:forwarded"
    async with ws_client(with_token(keyed_node, "alice")) as alice, api_client(keyed_node) as api:
        await alice.result("subscribe", channel=channel)
        body = {"channel": channel, "data": 1, "key": "m-1"}
        forwarded = await post(
            api, "/api/publish", {**body, "info": {"client": "r.7", "user": "alice"}}
        )
        by_alice = await alice.result("publish", channel=channel, data=2, key="m-1")
        by_server = await post(api, "/api/publish", body)
        [delivered, _] = await alice.publications(2)
        refused = await api.http.post(
            "/api/publish",
            json={**body, "info": {"client": "r.7", "user": "alice", "extra": 1}},
            headers=api.headers,
        )
    assert by_alice == forwarded  # the same publication: alice had published it already
    assert by_server["offset"] == forwarded["offset"] + 1
    assert delivered["info"] == {"client": "r.7", "user": "alice"}
    assert refused.status_code == 400


async def test_a_key_holding_nul_is_refused(node: ServerProcess) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        reply = await client.request("publish", channel="room:nul", data=1, key="a\x00b")
        response = await api.http.post(
            "/api/publish",
            json={"channel": "room:nul", "data": 1, "key": "\x00"},
            headers=api.headers,
        )
    assert reply["error"]["code"] == "bad_request"
    assert response.status_code == 400


async def test_the_same_key_in_another_channel_is_a_new_publication(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api:
        first = await post(api, "/api/publish", {"channel": "room:a", "data": 1, "key": "k"})
        await api.publish("room:b", {"n": 1})
        other = await post(api, "/api/publish", {"channel": "room:b", "data": 2, "key": "k"})
    assert first["offset"] == 1
    assert other["offset"] == 2


async def test_broadcast_with_a_repeated_key_publishes_once_per_channel(
    node: ServerProcess,
) -> None:
    channels = ["room:x", "room:y"]
    async with (
        api_client(node) as api,
        ws_client(node.ws_url) as x,
        ws_client(node.ws_url) as y,
    ):
        await x.result("subscribe", channel="room:x")
        await y.result("subscribe", channel="room:y")
        await api.publish("room:y", {"n": 0})  # so the two channels' offsets differ
        [_] = await y.publications(1)
        body = {"channels": channels, "data": {"alert": 1}, "key": "alert-1"}
        original = await post(api, "/api/broadcast", body)
        repeated = await post(api, "/api/broadcast", body)
        # The key is remembered per channel, so a single publish repeats it too.
        single = await post(
            api, "/api/publish", {"channel": "room:y", "data": {"alert": 2}, "key": "alert-1"}
        )
        for channel in channels:
            await api.publish(channel, {"sentinel": True})
        x_got = await x.publications(2)
        y_got = await y.publications(2)
    assert original["results"] == [
        {"channel": "room:x", "epoch": x_got[0]["epoch"], "offset": 1},
        {"channel": "room:y", "epoch": y_got[0]["epoch"], "offset": 2},
    ]
    assert repeated == {
        "results": [{**result, "duplicate": True} for result in original["results"]]
    }
    assert single == {"epoch": y_got[0]["epoch"], "offset": 2, "duplicate": True}
    assert [(p["offset"], p["data"]) for p in x_got] == [(1, {"alert": 1}), (2, {"sentinel": True})]
    assert [(p["offset"], p["data"]) for p in y_got] == [(2, {"alert": 1}), (3, {"sentinel": True})]
