"""The server API (docs/protocol.md §6) as end-to-end tests call it, over httpx.

Publishing is how tests make publications; ``/api/channels`` is how they observe that
the server holds a subscriber (a long poll waiting, a stream subscribed) before they
act, instead of guessing with a sleep.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, Final

import httpx

DEFAULT_TIMEOUT_S: Final = 10.0
# Between two looks at /api/channels while awaiting a subscriber count: the condition
# is observed, never assumed after a delay; this only spaces the requests out.
OBSERVE_INTERVAL_S: Final = 0.01


class ApiClient:
    """Calls to one server's API with its key."""

    def __init__(self, http: httpx.AsyncClient, api_key: str) -> None:
        self.http = http
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def publish(self, channel: str, data: Any) -> dict[str, Any]:
        """Publish ``data`` in ``channel``; return ``{"epoch", "offset"}``."""
        response = await self.http.post(
            "/api/publish", json={"channel": channel, "data": data}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def publish_many(self, channel: str, count: int, start: int = 1) -> list[int]:
        """Publish ``{"n": start}`` ... in order; return the offsets they got."""
        offsets = []
        for n in range(start, start + count):
            offsets.append((await self.publish(channel, {"n": n}))["offset"])
        return offsets

    async def publish_body(self, body: bytes) -> httpx.Response:
        """POST ``body`` to ``/api/publish`` exactly as given (raw JSON text)."""
        headers = {**self.headers, "Content-Type": "application/json"}
        return await self.http.post("/api/publish", content=body, headers=headers)

    async def publish_ascii(self, channel: str, data: Any) -> dict[str, Any]:
        """Publish with every non-ASCII character escaped in the JSON text."""
        body = json.dumps({"channel": channel, "data": data}, ensure_ascii=True).encode()
        response = await self.publish_body(body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def publish_utf8(self, channel: str, data: Any) -> dict[str, Any]:
        """Publish with non-ASCII characters as raw UTF-8 in the JSON text."""
        body = json.dumps({"channel": channel, "data": data}, ensure_ascii=False).encode()
        response = await self.publish_body(body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    async def subscribers(self, channel: str) -> int:
        """Return how many subscribers this node holds for ``channel``."""
        response = await self.http.get(
            "/api/channels", params={"prefix": channel}, headers=self.headers
        )
        assert response.status_code == 200, response.text
        channels: dict[str, dict[str, int]] = response.json()["channels"]
        return channels.get(channel, {}).get("subscribers", 0)

    async def wait_for_subscribers(
        self, channel: str, count: int, wait_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Return once the node holds at least ``count`` subscribers of ``channel``."""
        await self._observe(channel, lambda held: held >= count, wait_s)

    async def wait_for_no_subscribers(
        self, channel: str, wait_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        """Return once the node holds no subscriber of ``channel`` (closed clients left)."""
        await self._observe(channel, lambda held: held == 0, wait_s)

    async def _observe(
        self, channel: str, is_reached: Callable[[int], bool], wait_s: float
    ) -> None:
        async with asyncio.timeout(wait_s):
            while True:
                if is_reached(await self.subscribers(channel)):
                    return
                await asyncio.sleep(OBSERVE_INTERVAL_S)
