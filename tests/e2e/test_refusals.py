"""Refusals are visible on the node (transports/refusals.py): each is one INFO line on
its stderr with the reason and the client's address, never the token or the key, and
a counter in /metrics, with server-initiated closes by code and the process's figures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.e2e.conftest import API_KEY, JWT_SECRET, make_token
from tests.support.server import ServerProcess, start_server
from tests.support.ws import ws_client

WRONG_KEY = "wrong-api-key-0123456789"
BAD_TOKEN = "bad.token.abcdefghijklmnopqrstuvwxyz"


@pytest.fixture
def guarded(config_file: Path) -> Iterator[ServerProcess]:
    """A node with an API key, a JWT secret and a command rate of 1 per second."""
    process = start_server(
        config=config_file,
        env={
            "TIDINGS_API_KEY": API_KEY,
            "TIDINGS_JWT_SECRET": JWT_SECRET,
            "TIDINGS_COMMAND_RATE": "1",
            "TIDINGS_COMMAND_BURST": "2",
        },
    )
    try:
        yield process
    finally:
        process.kill()


def metric(text: str, name: str) -> float:
    """The value of the sample ``name`` (with its labels) in a /metrics answer."""
    for line in text.splitlines():
        sample, _, value = line.rpartition(" ")
        if sample == name:
            return float(value)
    raise AssertionError(f"{name} is not in /metrics")


async def test_each_refusal_is_logged_with_the_address_and_counted(
    guarded: ServerProcess,
) -> None:
    url = guarded.ws_url
    # A refused origin: the handshake is answered 403.
    with pytest.raises(websockets.InvalidStatus):
        async with ws_client(url, origin="https://evil.example"):
            pass
    # A rejected token: 4001.
    async with ws_client(f"{url}?token={BAD_TOKEN}") as rejected:
        assert await rejected.wait_closed() == 4001
    # A forbidden subscribe, then commands over the rate (connect, subscribe, 2 pings).
    token = make_token("alice", channels=["room:*"])
    async with ws_client(url) as client:
        await client.result("connect", token=token)
        forbidden = await client.request("subscribe", channel="secret:refusals")
        assert forbidden["error"]["code"] == "permission_denied"
        limited = await client.request("ping")
        assert limited["error"]["code"] == "too_many_requests"
    async with httpx.AsyncClient(base_url=guarded.http_url) as http:
        wrong = await http.get("/api/channels", headers={"Authorization": f"Bearer {WRONG_KEY}"})
        missing = await http.get("/api/channels")
        assert wrong.status_code == missing.status_code == 401
        assert wrong.json() != missing.json()
        metrics = (await http.get("/metrics")).text
    assert metric(metrics, 'tidings_refusals_total{reason="origin"}') == 1
    assert metric(metrics, 'tidings_refusals_total{reason="token"}') == 1
    assert metric(metrics, 'tidings_refusals_total{reason="forbidden"}') == 1
    assert metric(metrics, 'tidings_refusals_total{reason="rate_limit"}') == 1
    assert metric(metrics, 'tidings_refusals_total{reason="api_key"}') == 2
    assert metric(metrics, 'tidings_disconnects_total{code="4001"}') == 1
    await asyncio.to_thread(guarded.stop)  # the whole log is read once it has exited
    log = "\n".join(guarded.log)
    for said in (
        "refused an origin from 127.0.0.1:",
        "refused a connection token from 127.0.0.1:",
        "refused a channel from 127.0.0.1:",
        "refused commands over the rate from 127.0.0.1:",
        "refused a server API call from 127.0.0.1:",
    ):
        assert said in log, said
    assert "https://evil.example" in log
    for secret in (BAD_TOKEN, WRONG_KEY, API_KEY, JWT_SECRET, token):
        assert secret not in log


async def test_metrics_show_the_process_and_the_version(guarded: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=guarded.http_url) as http:
        metrics = (await http.get("/metrics")).text
    assert metric(metrics, "process_resident_memory_bytes") > 0
    assert metric(metrics, "process_open_fds") > 0
    assert metric(metrics, "process_max_fds") >= metric(metrics, "process_open_fds")
    assert 'tidings_build_info{version="' in metrics
