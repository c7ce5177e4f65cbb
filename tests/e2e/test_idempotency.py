"""Idempotent publish (PROTOCOL.md §2.4): a repeated key in the same channel publishes
nothing and answers the original position, over the server API and over WebSocket.

"Delivered once" is observed without waiting for something not to happen: after the
repeats, a sentinel publication is made; a subscriber receives publications in offset
order, so if the very next one it gets is the sentinel, no repeat was delivered."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import api_client
from tests.support.api import ApiClient
from tests.support.server import ServerProcess
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
    assert repeated == original
    assert changed == original  # a retry with other data still publishes nothing
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


async def test_a_key_used_over_the_api_is_also_a_repeat_over_websocket(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        original = await post(
            api, "/api/publish", {"channel": "room:both", "data": 1, "key": "shared"}
        )
        repeated = await client.result("publish", channel="room:both", data=2, key="shared")
    assert repeated == original


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
    assert repeated == original
    assert single == {"epoch": y_got[0]["epoch"], "offset": 2}
    assert [(p["offset"], p["data"]) for p in x_got] == [(1, {"alert": 1}), (2, {"sentinel": True})]
    assert [(p["offset"], p["data"]) for p in y_got] == [(2, {"alert": 1}), (3, {"sentinel": True})]
