"""The server API forwarded to a channel's owner (docs/modes/hashing.md, "Forwarding"):
two real ``tidings serve`` nodes of a static ring that share a ``cluster_secret``, on
the backend the suite runs on (its native server publishes on a path of its own).
Publications sent to either node are sequenced by the owner alone; history and
presence are the owner's wherever asked; a node's call is refused without a valid
signature, or for a channel the receiver does not own; a WebSocket ``publish`` on the
wrong node is answered ``moved``; an owner that cannot be reached is a 503."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Final

import httpx
import pytest

from tests.support.ring_nodes import RingPair, start_pair
from tests.support.server import free_port, start_server
from tests.support.ws import ws_client
from tidings.core.node_call import NODE_AUTH_HEADER, sign_node_call
from tidings.core.ring import HashRing

pytestmark = pytest.mark.e2e

API_KEY: Final = "forwarding-api-key"
SECRET: Final = "a-cluster-secret-of-at-least-32-bytes"
AUTH: Final = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RingPair]:
    pair = start_pair(
        tmp_path_factory.mktemp("forwarding"),
        {"a": "ring", "b": "ring"},
        API_KEY,
        cluster_secret=SECRET,
        room_options="presence = true\nclient_publish = true",
    )
    try:
        yield pair
    finally:
        pair.kill()


async def publish(client: httpx.AsyncClient, url: str, channel: str, n: int) -> dict[str, Any]:
    response = await client.post(
        f"{url}/api/publish", json={"channel": channel, "data": {"n": n}}, headers=AUTH
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


async def test_publications_sent_to_any_node_are_sequenced_by_the_owner(ring: RingPair) -> None:
    channel = ring.channel("room:forwarded-", a="b", b="b")
    async with httpx.AsyncClient() as client:
        answers = [
            await publish(client, ring.url(node), channel, n)
            for n, node in enumerate(["a", "b", "a", "a", "b"], start=1)
        ]
        histories = [
            (
                await client.get(
                    f"{ring.url(node)}/api/history", params={"channel": channel}, headers=AUTH
                )
            ).json()
            for node in ("a", "b")
        ]
    assert [answer["offset"] for answer in answers] == [1, 2, 3, 4, 5]
    assert len({answer["epoch"] for answer in answers}) == 1
    # Asked of either node, the history is the owner's: the same answer.
    assert histories[0] == histories[1]
    assert [pub["data"]["n"] for pub in histories[0]["publications"]] == [1, 2, 3, 4, 5]


async def test_a_broadcast_publishes_each_channel_on_its_owner(ring: RingPair) -> None:
    mine = ring.channel("room:broadcast-a-", a="a", b="a")
    theirs = ring.channel("room:broadcast-b-", a="b", b="b")
    async with httpx.AsyncClient() as client:
        await publish(client, ring.url("b"), theirs, 0)
        response = await client.post(
            f"{ring.url('a')}/api/broadcast",
            json={"channels": [mine, theirs], "data": {"n": 1}},
            headers=AUTH,
        )
        owner_history = await client.get(
            f"{ring.url('b')}/api/history", params={"channel": theirs}, headers=AUTH
        )
    assert response.status_code == 200, response.text
    assert [(r["channel"], r["offset"]) for r in response.json()["results"]] == [
        (mine, 1),
        (theirs, 2),
    ]
    assert [pub["data"]["n"] for pub in owner_history.json()["publications"]] == [0, 1]


async def test_presence_asked_of_another_node_is_the_owners(ring: RingPair) -> None:
    channel = ring.channel("room:presence-", a="b", b="b")
    async with ws_client(ring.servers["b"].ws_url) as ws, httpx.AsyncClient() as client:
        await ws.result("connect")
        await ws.result("subscribe", channel=channel)
        response = await client.get(
            f"{ring.url('a')}/api/presence", params={"channel": channel}, headers=AUTH
        )
    assert response.status_code == 200, response.text
    assert len(response.json()["clients"]) == 1


async def test_a_websocket_publish_on_a_node_that_does_not_own_the_channel_is_moved(
    ring: RingPair,
) -> None:
    channel = ring.channel("room:ws-publish-", a="b", b="b")
    async with ws_client(ring.servers["a"].ws_url) as ws:
        await ws.result("connect")
        reply = await ws.request("publish", channel=channel, data={"n": 1})
    assert reply["error"]["code"] == "moved"
    assert reply["error"]["url"] == f"{ring.servers['b'].ws_url}"


def signed(method: str, target: str, body: bytes, *, secret: str = SECRET, **kw: int) -> str:
    now_s = kw.get("now_s", int(time.time()))
    return sign_node_call(
        secret.encode(), method, target, body, now_s=now_s, ring_version=kw.get("version", 0)
    )


async def node_publish(url: str, channel: str, auth: str | None) -> httpx.Response:
    body = b'{"channel":"%s","data":1}' % channel.encode()
    headers = {"content-type": "application/json"}
    if auth is not None:
        headers[NODE_AUTH_HEADER] = auth
    async with httpx.AsyncClient() as client:
        return await client.post(f"{url}/api/publish", content=body, headers=headers)


async def test_a_node_call_is_taken_by_the_owner_without_an_api_key(ring: RingPair) -> None:
    channel = ring.channel("room:signed-", a="b", b="b")
    body = b'{"channel":"%s","data":1}' % channel.encode()
    response = await node_publish(ring.url("b"), channel, signed("POST", "/api/publish", body))
    assert response.status_code == 200, response.text
    assert response.json()["offset"] == 1


@pytest.mark.parametrize(
    ("how", "complaint"),
    [
        ("none", "api key"),
        ("other secret", "signature does not match"),
        ("old", "at most 30 s"),
        ("other body", "signature does not match"),
    ],
)
async def test_a_node_call_without_a_valid_signature_is_refused(
    ring: RingPair, how: str, complaint: str
) -> None:
    channel = ring.channel("room:refused-", a="b", b="b")
    body = b'{"channel":"%s","data":1}' % channel.encode()
    auth = {
        "none": None,
        "other secret": signed("POST", "/api/publish", body, secret="x" * 32),
        "old": signed("POST", "/api/publish", body, now_s=int(time.time()) - 3600),
        "other body": signed("POST", "/api/publish", b"{}"),
    }[how]
    response = await node_publish(ring.url("b"), channel, auth)
    assert response.status_code == 401
    assert complaint in response.json()["error"]["message"].lower()


async def test_a_node_call_about_a_channel_the_receiver_does_not_own_is_refused(
    ring: RingPair,
) -> None:
    channel = ring.channel("room:not-owned-", a="a", b="a")
    body = b'{"channel":"%s","data":1}' % channel.encode()
    response = await node_publish(ring.url("b"), channel, signed("POST", "/api/publish", body))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "stale_ring"


@pytest.fixture(scope="module")
def lone_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Node ``a`` of a ring whose node ``b`` is not running."""
    port, dead = free_port(), free_port()
    config = tmp_path_factory.mktemp("lone") / "tidings.toml"
    config.write_text(
        f'node_id = "a"\n[ring_nodes]\na = "http://127.0.0.1:{port}"\n'
        f'b = "http://127.0.0.1:{dead}"\n'
    )
    env = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_CLUSTER_SECRET": SECRET}
    process = start_server(port=port, config=config, env=env)
    try:
        yield process.http_url
    finally:
        process.kill()


def owned_by_b(prefix: str) -> str:
    ring = HashRing(["a", "b"])
    return next(c for c in (f"{prefix}{n}" for n in range(1000)) if ring.owner(c) == "b")


async def test_a_publish_whose_owner_cannot_be_reached_is_unavailable(lone_node: str) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{lone_node}/api/publish",
            json={"channel": owned_by_b("doc:"), "data": 1},
            headers=AUTH,
        )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "unavailable"


def test_a_short_cluster_secret_stops_the_node_with_one_line() -> None:
    with pytest.raises(RuntimeError, match="cluster_secret is 5 bytes"):
        start_server(env={"TIDINGS_CLUSTER_SECRET": "short"})
