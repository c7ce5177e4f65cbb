"""Handlers that record what a broker delivers (publications, node commands), for
broker tests."""

from __future__ import annotations

import asyncio
from typing import Final

from tidings.brokers.base import NodeCommand
from tidings.core.publication import Publication

# Guards against a hang when a delivery never comes; not a timing assertion.
WAIT_LIMIT_S: Final = 10.0


class RecordingHandler:
    """Keeps every publication handed to it, in order; tests await deliveries."""

    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self._changed = asyncio.Event()

    def __call__(self, publication: Publication) -> None:
        self.publications.append(publication)
        self._changed.set()

    async def wait_for(self, count: int) -> list[Publication]:
        """Wait until at least ``count`` publications arrived; return the first ``count``."""
        async with asyncio.timeout(WAIT_LIMIT_S):
            while len(self.publications) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.publications[:count]


class RecordingCommands:
    """Keeps every node command handed to it, in order; tests await them."""

    def __init__(self) -> None:
        self.commands: list[NodeCommand] = []
        self._changed = asyncio.Event()

    def __call__(self, command: NodeCommand) -> None:
        self.commands.append(command)
        self._changed.set()

    async def wait_for(self, count: int) -> list[NodeCommand]:
        """Wait until at least ``count`` commands arrived; return the first ``count``."""
        async with asyncio.timeout(WAIT_LIMIT_S):
            while len(self.commands) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.commands[:count]
