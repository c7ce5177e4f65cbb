"""The demo's settings and backend (server/demo.py), in process."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from tests.support.recording import RecordingSubscriber
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import Policy
from tidings.core.recovery import Replay
from tidings.server.app import TidingsApp
from tidings.server.config import Settings, load_settings
from tidings.server.demo import DEMO_TOKEN_TTL_S, prepare_demo

ROOM = NamespaceName("room")
USER = NamespaceName("user")


@pytest.fixture
async def app() -> AsyncIterator[TidingsApp]:
    node = TidingsApp(Settings(demo=True))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
async def http(app: TidingsApp) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield client


async def token_for(http: httpx.AsyncClient, name: str) -> dict[str, str]:
    """The ``Authorization`` header of a demo user."""
    response = await http.post("/demo/token", json={"name": name})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


def test_the_demo_turns_on_publishing_and_presence_in_rooms_and_makes_a_secret() -> None:
    setup = prepare_demo(Settings())
    room = setup.settings.namespaces[ROOM]
    assert room.client_publish
    assert room.presence
    assert setup.settings.namespaces[USER].policy is Policy.USER
    assert setup.mints_tokens
    assert setup.settings.jwt_secret is not None
    assert len(setup.settings.jwt_secret) >= 32
    assert prepare_demo(Settings()).settings.jwt_secret != setup.settings.jwt_secret


def test_a_configured_secret_is_kept_and_no_token_is_minted() -> None:
    setup = prepare_demo(Settings(jwt_secret="the-application-secret-long-enough-for-hs256"))
    assert setup.settings.jwt_secret == "the-application-secret-long-enough-for-hs256"
    assert not setup.mints_tokens


def test_the_demo_is_a_setting_too() -> None:
    assert load_settings(environ={"TIDINGS_DEMO": "true"}).demo
    assert not load_settings().demo


async def test_a_token_is_minted_for_a_name(app: TidingsApp, http: httpx.AsyncClient) -> None:
    response = await http.post("/demo/token", json={"name": "ann"})
    assert response.status_code == 200
    body = response.json()
    assert body["user"] == "ann"
    secret = app.settings.jwt_secret
    assert secret is not None
    claims = jwt.decode(body["token"], secret, algorithms=["HS256"])
    assert claims["sub"] == "ann"
    assert claims["exp"] - time.time() <= DEMO_TOKEN_TTL_S


@pytest.mark.parametrize("name", ["", "a b", "x" * 33, "ann:admin", "é"])
async def test_a_name_that_cannot_be_a_channel_is_refused(
    http: httpx.AsyncClient, name: str
) -> None:
    response = await http.post("/demo/token", json={"name": name})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


async def test_no_token_is_minted_on_a_node_with_its_own_secret() -> None:
    app = TidingsApp(Settings(demo=True, jwt_secret="the-application-secret-long-enough-for-hs256"))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            response = await http.post("/demo/token", json={"name": "ann"})
    finally:
        await app.stop()
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


async def test_publishing_needs_a_token_and_a_room(
    app: TidingsApp, http: httpx.AsyncClient
) -> None:
    body = {"channel": "room:lobby", "data": {"text": "hi"}}
    assert (await http.post("/demo/publish", json=body)).status_code == 401
    ann = await token_for(http, "ann")
    published = await http.post("/demo/publish", json=body, headers=ann)
    assert published.status_code == 200
    read = await app.hub.history(ChannelName("room:lobby"))
    assert isinstance(read.recovery, Replay)
    [publication] = read.recovery.publications
    assert publication.info is not None
    assert publication.info.user == "ann"
    for channel in ("general", "user:bob"):
        refused = await http.post("/demo/publish", json={**body, "channel": channel}, headers=ann)
        assert refused.status_code == 403, channel


async def test_history_returns_the_latest_publications(
    app: TidingsApp, http: httpx.AsyncClient
) -> None:
    for n in range(3):
        await app.publish("room:lobby", {"text": str(n)})
    ann = await token_for(http, "ann")
    response = await http.get(
        "/demo/history", params={"channel": "room:lobby", "limit": "2"}, headers=ann
    )
    body = response.json()
    assert [p["data"]["text"] for p in body["publications"]] == ["1", "2"]
    assert body["offset"] == 3


async def test_presence_lists_who_is_in_a_room(app: TidingsApp, http: httpx.AsyncClient) -> None:
    bob = RecordingSubscriber("c1", "bob")
    await app.hub.subscribe(ChannelName("room:lobby"), bob, presence=True)
    ann = await token_for(http, "ann")
    response = await http.get("/demo/presence", params={"channel": "room:lobby"}, headers=ann)
    assert response.json() == {"clients": {"c1": {"user": "bob"}}}


async def test_a_notification_lands_in_the_users_own_channel(
    app: TidingsApp, http: httpx.AsyncClient
) -> None:
    ann = await token_for(http, "ann")
    body = {"to": "bob", "data": {"room": "lobby", "text": "@bob hi"}}
    assert (await http.post("/demo/notify", json=body, headers=ann)).status_code == 200
    read = await app.hub.history(ChannelName("user:bob"))
    assert isinstance(read.recovery, Replay)
    [publication] = read.recovery.publications
    assert publication.data == b'{"from":"ann","data":{"room":"lobby","text":"@bob hi"}}'


async def test_without_the_demo_there_is_no_demo() -> None:
    app = TidingsApp(Settings())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            assert (await http.get("/demo")).status_code == 404
            assert (await http.post("/demo/token", json={"name": "ann"})).status_code == 404
            assert (await http.get("/static/tidings.js")).status_code == 200
    finally:
        await app.stop()


async def test_the_demo_page_is_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/demo")
    assert page.status_code == 200
    assert 'src="static/demo.js"' in page.text


def test_on_postgres_the_demo_adds_a_table_source_beside_the_brokers_schema() -> None:
    url = "postgres://app@db:5432/chat?schema=rt&sslmode=disable"
    setup = prepare_demo(Settings(demo=True, broker=url))
    assert setup.table is not None
    assert setup.table.table == "rt_demo.messages"
    [source] = setup.settings.sources
    assert (source.name, source.kind) == ("demo_rt", "table")
    assert source.options["table"] == "rt_demo.messages"
    assert source.options["channel"] == "room:{room}"
    # libpq's parameters kept, the broker's own (schema) left out
    assert source.options["dsn"] == "postgresql://app@db:5432/chat?sslmode=disable"


def test_a_long_schema_gives_the_demos_source_a_short_stable_name() -> None:
    url = f"postgres://db/chat?schema={'s' * 40}"
    first = prepare_demo(Settings(demo=True, broker=url)).table
    again = prepare_demo(Settings(demo=True, broker=url)).table
    assert first is not None
    assert again is not None
    assert first.source_name == again.source_name
    assert len(first.source_name) <= 21  # keeps the trigger's identifiers under 63
    assert first.schema == f"{'s' * 40}_demo"


@pytest.mark.parametrize("broker", [None, "redis://127.0.0.1:6379/0"])
def test_on_other_brokers_the_demo_has_no_table_and_no_source(broker: str | None) -> None:
    setup = prepare_demo(Settings(demo=True, broker=broker))
    assert setup.table is None
    assert setup.settings.sources == ()


async def test_about_says_messages_go_through_the_broker(http: httpx.AsyncClient) -> None:
    assert (await http.get("/demo/about")).json() == {"messages": "broker"}
