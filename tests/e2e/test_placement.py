"""The placement check of admission (issue #10) against a real server on a real socket,
on the backend the suite runs on (native by default, uvicorn with
``TIDINGS_TEST_SERVER_BACKEND=uvicorn``): a channel another node owns is answered
``307`` with ``Location`` on SSE and polling (both doors of the native server: its fast
path for a watched channel included), and ``moved`` with the owner's ``/ws`` URL on a
WebSocket ``subscribe`` (docs/protocol.md §9).

A ``tidings serve`` process cannot take a fake placement, so the app is built here, in
this process, and served as ``tidings serve`` would serve it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import httpx

from tests.support.placement import OWNER_URL as OWNER
from tests.support.placement import ElsewherePlacement
from tests.support.served import served as serve_app
from tests.support.ws import ws_client
from tidings.server.app import TidingsApp
from tidings.server.config import Settings

MOVED = "doc:9"


def served(placement: ElsewherePlacement) -> AbstractAsyncContextManager[str]:
    """Serve a node with ``placement`` on a real socket; yield its base URL."""
    return serve_app(TidingsApp(Settings(), placement=placement))


async def test_sse_for_a_channel_owned_elsewhere_is_redirected_to_the_same_request() -> None:
    async with (
        served(ElsewherePlacement(MOVED)) as base,
        httpx.AsyncClient() as client,
    ):
        response = await client.get(f"{base}/sse", params={"channel": ["room:1", MOVED]})
    assert response.status_code == 307
    assert response.headers["location"] == f"{OWNER}/sse?channel=room%3A1&channel=doc%3A9"
    assert response.json()["error"]["code"] == "moved"


async def test_a_poll_for_a_channel_owned_elsewhere_is_redirected_to_the_same_request() -> None:
    async with (
        served(ElsewherePlacement(MOVED)) as base,
        httpx.AsyncClient() as client,
    ):
        here = await client.get(f"{base}/poll", params={"channel": "room:1"})
        moved = await client.get(f"{base}/poll", params={"channel": MOVED, "wait": "5"})
    assert here.status_code == 200
    assert moved.status_code == 307
    assert moved.headers["location"] == f"{OWNER}/poll?channel=doc%3A9&wait=5"


async def test_a_watched_channel_that_moves_is_redirected_by_the_fast_path_too() -> None:
    placement = ElsewherePlacement()
    async with served(placement) as base, httpx.AsyncClient() as client:
        # The first poll reads the broker and watches the channel: the native server
        # answers the next ones from the watch, without the ASGI app.
        first = await client.get(f"{base}/poll", params={"channel": MOVED})
        cursor = first.json()["cursor"]
        again = await client.get(f"{base}/poll", params={"channel": MOVED, "cursor": cursor})
        placement.elsewhere.add(MOVED)  # ownership moves to node b
        moved = await client.get(f"{base}/poll", params={"channel": MOVED, "cursor": cursor})
    assert (first.status_code, again.status_code) == (200, 200)
    assert moved.status_code == 307
    assert moved.headers["location"] == f"{OWNER}/poll?channel=doc%3A9&cursor={cursor}"


async def test_a_websocket_subscribe_to_a_channel_owned_elsewhere_is_moved() -> None:
    async with (
        served(ElsewherePlacement(MOVED)) as base,
        ws_client(base.replace("http", "ws", 1) + "/ws") as ws,
    ):
        moved = await ws.request("subscribe", channel=MOVED)
        here = await ws.request("subscribe", channel="room:1")
    assert moved["error"] == {
        "code": "moved",
        "message": f"channel {MOVED} is served by another node: {OWNER}",
        "url": "wss://node-b.example:8443/ws",
    }
    assert "result" in here
