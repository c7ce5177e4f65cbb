"""The server API client (client/api.py) against a real server: publish, broadcast,
history, presence, channels, and errors raised as the exception of their code."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.client.conftest import API_KEY, Node, numbers, publish_numbers, take_publications
from tidings.client import ApiClient, History
from tidings.core.publication import Position
from tidings.errors import BadRequest, MessageTooLarge, PermissionDenied, Unauthorized


@pytest.mark.e2e
async def test_publish_returns_consecutive_positions(api: ApiClient) -> None:
    first = await api.publish("room:api", {"text": "hi"})
    second = await api.publish("room:api", [1, 2, 3])
    assert first.offset == 1
    assert second == Position(first.epoch, 2)


@pytest.mark.e2e
async def test_publish_with_a_repeated_key_answers_the_original_position(api: ApiClient) -> None:
    original = await api.publish("room:idem", {"n": 1}, key="order-17")
    repeated = await api.publish("room:idem", {"n": 1}, key="order-17")
    assert repeated == original
    assert len((await api.history("room:idem")).publications) == 1


@pytest.mark.e2e
async def test_broadcast_returns_each_channels_position(api: ApiClient) -> None:
    await api.publish("room:b1", "before")
    positions = await api.broadcast(["room:b1", "room:b2"], {"all": True})
    assert {channel: position.offset for channel, position in positions.items()} == {
        "room:b1": 2,
        "room:b2": 1,
    }


@pytest.mark.e2e
async def test_history_reads_latest_and_pages_forward(api: ApiClient) -> None:
    await publish_numbers(api, "room:hist", range(1, 8))
    latest = await api.history("room:hist", limit=3)
    assert numbers(list(latest.publications)) == [5, 6, 7]
    assert latest.position.offset == 7
    assert latest.recovered is None
    page = await api.history("room:hist", since=Position(latest.position.epoch, 2), limit=2)
    assert [p.offset for p in page.publications] == [3, 4]
    assert page.recovered is True
    assert json.loads(page.publications[0].data) == {"n": 3}


@pytest.mark.e2e
async def test_history_from_an_evicted_position_says_not_recovered(api: ApiClient) -> None:
    await publish_numbers(api, "small:hist", range(1, 11))  # history_size = 5
    head = (await api.history("small:hist")).position
    read = await api.history("small:hist", since=Position(head.epoch, 1))
    assert read == History(head, (), recovered=False)


@pytest.mark.e2e
async def test_a_wrong_api_key_raises_unauthorized(node: Node) -> None:
    async with ApiClient(node.http_url, "not-the-key") as api:
        with pytest.raises(Unauthorized, match="api key"):
            await api.publish("room:x", 1)


@pytest.mark.e2e
async def test_errors_raise_the_exception_of_their_code(api: ApiClient) -> None:
    with pytest.raises(BadRequest, match="channel"):
        await api.publish("bad channel!", 1)
    with pytest.raises(MessageTooLarge):
        await api.publish("tiny:x", "x" * 2000)  # max_data_size = 1KiB
    with pytest.raises(PermissionDenied, match="presence"):
        await api.presence("room:x")  # presence is off in room
    with pytest.raises(BadRequest):
        await api.disconnect("someone", code=1000)


@pytest.mark.e2e
async def test_data_that_is_not_json_raises_type_error_before_any_request(api: ApiClient) -> None:
    with pytest.raises(TypeError, match="JSON"):
        await api.publish("room:x", {"when": object()})


@pytest.mark.e2e
async def test_channels_counts_subscribers(node: Node, api: ApiClient) -> None:
    channel = "room:counted"
    head = (await api.history(channel)).position
    async with node.subscribe(channel, transport="ws", since={channel: head}) as sub:
        await api.publish(channel, 1)
        await take_publications(sub, 1)  # it is subscribed
        assert (await api.channels("room:count")) == {channel: 1}


async def test_api_client_answers_through_any_httpx_transport() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {API_KEY}"
        assert request.url.path == "/mounted/api/publish"
        return httpx.Response(200, json={"epoch": "e", "offset": 9})

    transport = httpx.MockTransport(answer)
    async with ApiClient("http://tidings.test/mounted/", API_KEY, transport=transport) as api:
        assert await api.publish("room:x", 1) == Position("e", 9)


async def test_a_non_tidings_error_page_raises_by_its_status() -> None:
    transport = httpx.MockTransport(lambda _r: httpx.Response(403, text="<h1>Forbidden</h1>"))
    async with ApiClient("http://tidings.test", API_KEY, transport=transport) as api:
        with pytest.raises(PermissionDenied, match="HTTP 403"):
            await api.history("room:x")
