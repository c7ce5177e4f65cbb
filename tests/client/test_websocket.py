"""The client's ``ws`` transport (client/websocket.py) against a scripted server: a link
that goes silent for two announced ping intervals is dropped and reconnected, and the
reconnect resumes from the position held; a draining server's ``disconnect`` delay is
what the client waits before reconnecting."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from tests.client.conftest import fast_backoff, take
from tidings.client import Backoff, Subscription
from tidings.client.frames import Disconnect, decode
from tidings.client.reconnect import MAX_SERVER_DELAY_S
from tidings.client.reconnect import server_delay_s as _server_delay_s
from tidings.core.publication import Publication
from tidings.errors import ConnectionClosed

PING_S = 0.1  # the interval the scripted server announces; it then never pings


class SilentServer:
    """Answers ``connect`` and ``subscribe``, pushes one publication on the first
    connection, then says nothing more; records what each connection subscribed with."""

    def __init__(self) -> None:
        self.subscribes: list[dict[str, Any]] = []
        self.second_connection = asyncio.Event()

    async def __call__(self, connection: ServerConnection) -> None:
        async for raw in connection:
            command = json.loads(raw)
            if command["op"] == "connect":
                result: dict[str, Any] = {"client": "c", "user": "", "ping": PING_S, "version": "1"}
            else:
                self.subscribes.append(command)
                result = {"epoch": "e", "offset": 0, "recovered": True, "publications": []}
            await connection.send(json.dumps({"id": command["id"], "result": result}))
            if command["op"] == "subscribe" and len(self.subscribes) == 1:
                push = {
                    "push": "pub",
                    "channel": "room:x",
                    "epoch": "e",
                    "offset": 1,
                    "data": {"n": 1},
                    "ts": 1,
                }
                await connection.send(json.dumps(push))
            if len(self.subscribes) == 2:
                self.second_connection.set()


async def test_a_websocket_silent_for_two_ping_intervals_is_replaced_and_resumed() -> None:
    script = SilentServer()
    async with serve(script, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        subscription = Subscription(
            f"http://127.0.0.1:{port}", ["room:x"], transport="ws", backoff=fast_backoff()
        )
        async with subscription:
            [first] = await take(subscription, 1)
            async with asyncio.timeout(10):
                await script.second_connection.wait()
    assert isinstance(first, Publication)
    assert [command.get("since") for command in script.subscribes] == [
        None,
        {"epoch": "e", "offset": 1},
    ]


class DrainingServer:
    """Answers ``connect`` and ``subscribe``; the first connection is then told to
    reconnect after ``delay`` ms (a draining node's ``disconnect``) and closed with 1001."""

    def __init__(self, delay_ms: int) -> None:
        self.delay_ms = delay_ms
        self.subscribes = 0
        self.second_connection = asyncio.Event()

    async def __call__(self, connection: ServerConnection) -> None:
        async for raw in connection:
            command = json.loads(raw)
            if command["op"] == "connect":
                result: dict[str, Any] = {"client": "c", "user": "", "ping": 25, "version": "1"}
            else:
                self.subscribes += 1
                result = {"epoch": "e", "offset": 0, "recovered": True, "publications": []}
            await connection.send(json.dumps({"id": command["id"], "result": result}))
            if command["op"] != "subscribe":
                continue
            if self.subscribes == 1:
                goodbye = {
                    "push": "disconnect",
                    "code": 1001,
                    "reason": "server shutting down",
                    "reconnect": True,
                    "delay": self.delay_ms,
                }
                await connection.send(json.dumps(goodbye))
                await connection.close(1001, "server shutting down")
            else:
                self.second_connection.set()


async def test_a_disconnect_delay_replaces_the_backoff_before_reconnecting() -> None:
    script = DrainingServer(delay_ms=0)
    # A backoff that would wait ten minutes: only the server's delay brings it back.
    backoff = Backoff(base_s=600.0, cap_s=600.0, uniform=lambda _low, high: high)
    async with serve(script, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        subscription = Subscription(
            f"http://127.0.0.1:{port}", ["room:x"], transport="ws", backoff=backoff
        )
        async with subscription:
            anext_task = asyncio.ensure_future(anext(aiter(subscription)))
            try:
                async with asyncio.timeout(10):
                    await script.second_connection.wait()
            finally:
                anext_task.cancel()
    assert script.subscribes == 2


def test_a_server_delay_is_followed_up_to_a_bound() -> None:
    def closed(delay_ms: int | None) -> ConnectionClosed:
        return ConnectionClosed(1001, "server shutting down", reconnect=True, delay_ms=delay_ms)

    assert _server_delay_s(closed(1500)) == 1.5
    assert _server_delay_s(closed(10**9)) == MAX_SERVER_DELAY_S
    assert _server_delay_s(closed(None)) is None
    assert _server_delay_s(ConnectionResetError("gone")) is None


@pytest.mark.parametrize(
    ("delay", "delay_ms"),
    [("2500", 2500), ("0.4", 1), ("-5", None), ("1e12", 10**12), ("null", None)],
)
def test_a_disconnect_delay_is_whole_ms_and_nonsense_is_left_to_the_backoff(
    delay: str, delay_ms: int | None
) -> None:
    raw = '{"push":"disconnect","code":1001,"reason":"","reconnect":true,"delay":' + delay + "}"
    assert decode("disconnect push", raw, Disconnect).delay_ms == delay_ms
