"""The client's ``ws`` transport (client/websocket.py) against a scripted server: a link
that goes silent for two announced ping intervals is dropped and reconnected, and the
reconnect resumes from the position held."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from tests.client.conftest import fast_backoff, take
from tidings.client import Subscription
from tidings.core.publication import Publication

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
