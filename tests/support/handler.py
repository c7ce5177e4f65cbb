"""Handlers that record what a broker delivers (publications, node commands), for
broker tests."""

from __future__ import annotations

import asyncio
from typing import Final, Generic, TypeVar

from tidings.brokers.base import NodeCommand
from tidings.core.publication import Publication

# Guards against a hang when a delivery never comes; not a timing assertion.
WAIT_LIMIT_S: Final = 10.0

T = TypeVar("T")


class Recording(Generic[T]):
    """Keeps every item handed to it, in order; tests await them."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self._changed = asyncio.Event()

    def __call__(self, item: T) -> None:
        self.items.append(item)
        self._changed.set()

    async def wait_for(self, count: int) -> list[T]:
        """Wait until at least ``count`` items arrived; return the first ``count``."""
        async with asyncio.timeout(WAIT_LIMIT_S):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.items[:count]


class RecordingHandler(Recording[Publication]):
    """Keeps every publication a broker delivers."""

    @property
    def publications(self) -> list[Publication]:
        return self.items


class RecordingCommands(Recording[NodeCommand]):
    """Keeps every node command a broker hands over."""

    @property
    def commands(self) -> list[NodeCommand]:
        return self.items
