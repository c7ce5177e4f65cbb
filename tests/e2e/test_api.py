"""The server API (docs/protocol.md §6) as the application's backend uses it, observed both in
its answers and in what WebSocket clients receive."""

from __future__ import annotations

from typing import Any

import httpx

from tests.e2e.conftest import api_client, make_token
from tests.support.api import ApiClient
from tests.support.server import ServerProcess
from tests.support.ws import ws_client


async def get(api: ApiClient, path: str, **params: Any) -> dict[str, Any]:
    response = await api.http.get(path, params=params, headers=api.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def post(api: ApiClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await api.http.post(path, json=body, headers=api.headers)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_broadcast_publishes_in_each_channel_and_reports_each_position(
    node: ServerProcess,
) -> None:
    channels = ["room:b1", "room:b2", "news"]
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        for channel in channels:
            await client.result("subscribe", channel=channel)
        await api.publish("room:b2", {"before": True})
        answer = await post(api, "/api/broadcast", {"channels": channels, "data": {"hi": 1}})
        received = await client.publications(4)
    epoch = received[0]["epoch"]
    assert answer == {
        "results": [
            {"channel": "room:b1", "epoch": epoch, "offset": 1},
            {"channel": "room:b2", "epoch": epoch, "offset": 2},
            {"channel": "news", "epoch": epoch, "offset": 1},
        ]
    }
    assert [(p["channel"], p["offset"], p["data"]) for p in received[1:]] == [
        ("room:b1", 1, {"hi": 1}),
        ("room:b2", 2, {"hi": 1}),
        ("news", 1, {"hi": 1}),
    ]


async def test_broadcast_with_one_invalid_channel_publishes_nowhere(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api:
        response = await api.http.post(
            "/api/broadcast",
            json={"channels": ["room:ok", "bad channel"], "data": 1},
            headers=api.headers,
        )
        history = await get(api, "/api/history", channel="room:ok")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert (history["offset"], history["publications"]) == (0, [])


async def test_history_pages_from_a_position_and_says_recovered(node: ServerProcess) -> None:
    async with api_client(node) as api:
        await api.publish_many("room:hist", 9)
        epoch = (await api.publish("room:hist", {"n": 10}))["epoch"]
        page = await get(
            api, "/api/history", channel="room:hist", since_epoch=epoch, since_offset=3, limit=4
        )
        rest = await get(
            api, "/api/history", channel="room:hist", since_epoch=epoch, since_offset=7
        )
    assert (page["epoch"], page["offset"], page["recovered"]) == (epoch, 10, True)
    assert [(p["offset"], p["data"]) for p in page["publications"]] == [
        (n, {"n": n}) for n in range(4, 8)
    ]
    assert all(p["channel"] == "room:hist" and p["epoch"] == epoch for p in page["publications"])
    assert [p["offset"] for p in rest["publications"]] == [8, 9, 10]


async def test_history_without_since_returns_the_latest_n_oldest_first(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api:
        await api.publish_many("room:last", 10)
        latest = await get(api, "/api/history", channel="room:last", limit=3)
        none = await get(api, "/api/history", channel="room:last", limit=0)
        unknown = await get(api, "/api/history", channel="room:never")
    assert [p["offset"] for p in latest["publications"]] == [8, 9, 10]
    assert latest["offset"] == 10
    assert "recovered" not in latest
    assert none["publications"] == []
    assert (unknown["offset"], unknown["publications"]) == (0, [])


async def test_history_from_another_epoch_says_recovered_false(node: ServerProcess) -> None:
    async with api_client(node) as api:
        head = await api.publish("room:old", {"n": 1})
        answer = await get(
            api, "/api/history", channel="room:old", since_epoch="gone", since_offset=0
        )
    assert answer == {**head, "publications": [], "recovered": False}


async def test_channels_lists_this_nodes_channels_by_prefix_with_subscriber_counts(
    node: ServerProcess,
) -> None:
    async with (
        api_client(node) as api,
        ws_client(node.ws_url) as first,
        ws_client(node.ws_url) as second,
    ):
        await first.result("subscribe", channel="count:1")
        await second.result("subscribe", channel="count:1")
        await second.result("subscribe", channel="count:2")
        await first.result("subscribe", channel="countless")
        rooms = await get(api, "/api/channels", prefix="count:")
        everything = await get(api, "/api/channels")
        await second.result("unsubscribe", channel="count:2")
        await second.result("unsubscribe", channel="count:1")
        after = await get(api, "/api/channels", prefix="count:")
    assert rooms == {"channels": {"count:1": {"subscribers": 2}, "count:2": {"subscribers": 1}}}
    assert everything["channels"]["countless"] == {"subscribers": 1}
    assert after == {"channels": {"count:1": {"subscribers": 1}}}


async def test_presence_lists_subscribers_and_join_leave_are_pushed(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as watcher:
        watching = await watcher.result("connect")
        await watcher.result("subscribe", channel="room:p")
        async with ws_client(node.ws_url) as visitor:
            visiting = await visitor.result("connect")
            await visitor.result("subscribe", channel="room:p")
            joined = await watcher.next_push()
            present = await get(api, "/api/presence", channel="room:p")
            over_ws = await visitor.result("presence", channel="room:p")
            await visitor.result("unsubscribe", channel="room:p")
            left = await watcher.next_push()
            await visitor.result("subscribe", channel="room:p")
            rejoined = await watcher.next_push()
        # Closing the connection is a leave too.
        closed = await watcher.next_push()
        alone = await get(api, "/api/presence", channel="room:p")
    visitor_id = visiting["client"]
    event = {"channel": "room:p", "client": visitor_id, "user": ""}
    assert joined == {"push": "join", **event}
    assert left == {"push": "leave", **event}
    assert rejoined == {"push": "join", **event}
    assert closed == {"push": "leave", **event}
    assert present == {"clients": {watching["client"]: {"user": ""}, visitor_id: {"user": ""}}}
    assert over_ws == present
    assert alone == {"clients": {watching["client"]: {"user": ""}}}


async def test_disconnect_closes_every_connection_of_the_user_and_only_theirs(
    auth_node: ServerProcess,
) -> None:
    def as_user(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(user)}"}

    url = auth_node.ws_url
    async with (
        api_client(auth_node) as api,
        ws_client(url, headers=as_user("alice")) as phone,
        ws_client(url) as laptop,
        ws_client(url, headers=as_user("bob")) as bob,
    ):
        await phone.result("ping")
        await laptop.result("connect", token=make_token("alice"))  # by connect command
        await bob.result("ping")
        answer = await post(api, "/api/disconnect", {"user": "alice", "reason": "banned"})
        goodbyes = [(await c.next_push(), await c.wait_closed()) for c in (phone, laptop)]
        assert await bob.result("ping") == {}
    assert answer == {"disconnected": 2, "nodes": 1}
    expected = {"push": "disconnect", "code": 4003, "reason": "banned", "reconnect": False}
    assert goodbyes == [(expected, 4003), (expected, 4003)]


async def test_disconnect_with_a_reconnect_code_tells_the_client_to_come_back(
    auth_node: ServerProcess,
) -> None:
    headers = {"Authorization": f"Bearer {make_token('dora')}"}
    async with api_client(auth_node) as api, ws_client(auth_node.ws_url, headers) as client:
        await client.result("ping")
        answer = await post(api, "/api/disconnect", {"user": "dora", "code": 4500})
        push = await client.next_push()
        code = await client.wait_closed()
        nobody = await post(api, "/api/disconnect", {"user": "carol"})
    assert answer == {"disconnected": 1, "nodes": 1}
    assert (push["code"], push["reconnect"], code) == (4500, True, 4500)
    assert nobody == {"disconnected": 0, "nodes": 1}


async def test_health_and_ready_answer_200(node: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=node.http_url) as http:
        health = await http.get("/health")
        ready = await http.get("/ready")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_publish_answers_the_position_and_subscribers_get_ts_and_no_info(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api, ws_client(node.ws_url) as client:
        await client.result("subscribe", channel="room:pub")
        answer = await api.publish("room:pub", {"text": "multi\nline"})
        [publication] = await client.publications(1)
    assert set(answer) == {"epoch", "offset"}
    assert set(publication) == {"push", "channel", "epoch", "offset", "data", "ts"}
    assert publication["data"] == {"text": "multi\nline"}
    assert isinstance(publication["ts"], int)
    assert publication["ts"] > 1_600_000_000_000  # milliseconds since the Unix epoch
