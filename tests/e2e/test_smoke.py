"""The server starts, answers health checks, and delivers one publication."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import API_KEY
from tests.support.server import ServerProcess
from tests.support.ws import ws_client


async def test_published_data_reaches_a_websocket_subscriber(server: ServerProcess) -> None:
    async with ws_client(server.ws_url) as client:
        subscribed = await client.result("subscribe", channel="room:1")
        assert subscribed["offset"] == 0
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            response = await http.post(
                "/api/publish",
                json={"channel": "room:1", "data": {"text": "hi"}},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert response.json() == {"epoch": subscribed["epoch"], "offset": 1}
        [publication] = await client.publications(1)
        assert publication["data"] == {"text": "hi"}
        assert publication["offset"] == 1


def test_health_and_ready_answer_ok(server: ServerProcess) -> None:
    assert httpx.get(f"{server.http_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.http_url}/ready").json() == {"status": "ready"}
