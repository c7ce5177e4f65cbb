"""The ``transports`` setting: a transport left out is not served, and clients fall back."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support.server import start_server
from tidings.errors import ConfigError
from tidings.server.app import TidingsApp
from tidings.server.config import Settings, load_settings
from tidings.server.settings import TRANSPORTS


def test_every_transport_is_served_by_default() -> None:
    assert load_settings().transports == TRANSPORTS == ("ws", "sse", "poll")


def test_transports_come_from_the_environment_and_the_file(tmp_path: Path) -> None:
    assert load_settings(environ={"TIDINGS_TRANSPORTS": "sse, poll"}).transports == (
        "sse",
        "poll",
    )
    config = tmp_path / "tidings.toml"
    config.write_text('transports = ["poll", "ws"]\n')
    assert load_settings(config).transports == ("ws", "poll")  # in the canonical order


@pytest.mark.parametrize("value", ["", "ws,carrier-pigeon", "longpoll"])
def test_unknown_or_no_transports_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match="transports must name at least one of"):
        load_settings(environ={"TIDINGS_TRANSPORTS": value})


async def test_a_disabled_http_transport_answers_404() -> None:
    app = TidingsApp(Settings(transports=("ws",)))
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            assert (await http.get("/sse", params={"channel": "a"})).status_code == 404
            assert (await http.get("/poll", params={"channel": "a"})).status_code == 404
    finally:
        await app.stop()


@pytest.mark.e2e
async def test_a_disabled_websocket_refuses_the_handshake_with_403() -> None:
    server = await asyncio.to_thread(start_server, env={"TIDINGS_TRANSPORTS": "sse,poll"})
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(server.ws_url):
                pass
        assert refused.value.response.status_code == 403
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/poll", params={"channel": "a"})).status_code == 200
    finally:
        server.kill()
