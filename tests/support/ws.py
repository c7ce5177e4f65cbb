"""A plain WebSocket test client speaking docs/protocol.md §3 frame by frame.

Replies are matched to commands by ``id``; pushes are queued in arrival order so a
test can await exactly the next one. Built on ``websockets`` directly (not on
``tidings.client``) so the tests check the wire, not our own client's reading of it.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.typing import Origin

Frame = dict[str, Any]
DEFAULT_TIMEOUT_S = 10.0


class WsClient:
    """One WebSocket connection to a tidings server."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Frame]] = {}
        self.pushes: asyncio.Queue[Frame] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.connection:
                frame: Frame = json.loads(raw)
                waiter = self._replies.pop(frame["id"], None) if "id" in frame else None
                if waiter is not None:
                    waiter.set_result(frame)
                else:
                    self.pushes.put_nowait(frame)
        except Exception:  # the connection closed: tests look at close_code
            pass
        finally:
            for waiter in self._replies.values():
                if not waiter.done():
                    waiter.set_exception(ConnectionError("connection closed before the reply"))

    async def send_raw(self, text: str) -> None:
        """Send a frame exactly as given."""
        await self.connection.send(text)

    async def request(self, op: str, wait_s: float = DEFAULT_TIMEOUT_S, **fields: Any) -> Frame:
        """Send a command and return its whole reply frame (``result`` or ``error``)."""
        command_id = next(self._ids)
        waiter: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._replies[command_id] = waiter
        await self.connection.send(json.dumps({"op": op, "id": command_id, **fields}))
        return await asyncio.wait_for(waiter, wait_s)

    async def result(self, op: str, **fields: Any) -> Frame:
        """Send a command and return its ``result``; fail the test on an error reply."""
        reply = await self.request(op, **fields)
        assert "result" in reply, f"{op} failed: {reply}"
        result: Frame = reply["result"]
        return result

    async def next_push(self, wait_s: float = DEFAULT_TIMEOUT_S) -> Frame:
        """Return the next push (``pub``, ``ping``, ``disconnect``, ...)."""
        return await asyncio.wait_for(self.pushes.get(), wait_s)

    async def publications(self, count: int, wait_s: float = DEFAULT_TIMEOUT_S) -> list[Frame]:
        """Return the next ``count`` ``pub`` pushes, skipping pings."""
        found: list[Frame] = []
        while len(found) < count:
            push = await self.next_push(wait_s)
            if push.get("push") == "pub":
                found.append(push)
        return found

    async def wait_closed(self, wait_s: float = DEFAULT_TIMEOUT_S) -> int | None:
        """Wait until the server closes the connection; return the close code."""
        await asyncio.wait_for(self.connection.wait_closed(), wait_s)
        return self.connection.close_code

    async def close(self) -> None:
        """Close from the client side."""
        await self.connection.close()
        self._reader.cancel()


@asynccontextmanager
async def ws_client(
    url: str, headers: dict[str, str] | None = None, origin: str | None = None
) -> AsyncIterator[WsClient]:
    """Connect to ``url`` and yield a ``WsClient``; close on exit."""
    typed_origin = None if origin is None else Origin(origin)
    async with connect(
        url, additional_headers=headers, origin=typed_origin, max_size=None
    ) as connection:
        client = WsClient(connection)
        try:
            yield client
        finally:
            client._reader.cancel()
