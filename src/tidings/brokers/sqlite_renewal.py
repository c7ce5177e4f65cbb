"""The ``sqlite`` broker's restarts of channels in new epochs, as a barrier: no I/O.

A ring node restarts channels whose copy here is stale (``RenewingStore``). The memory
broker does it in one synchronous step; the sqlite broker must write the file first, in
its writer thread, while the event loop goes on. So a restart is a task that raises a
barrier the moment it is asked for: every publish, read and load of a channel waits
(``wait``) until no restart is under way, so nothing is sequenced or served from a
stale copy meanwhile. Restarts run one after another. ``generation`` counts those
begun: a load (or adoption) that began before one and ends after it must not install
what it read, for the restart may have changed it (``SqliteBroker._channel``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tidings.errors import BrokerError

T = TypeVar("T")


class Renewals:
    """The restarts under way in one broker; see the module docstring."""

    def __init__(self) -> None:
        self.generation = 0
        """How many restarts have begun."""
        self._current: asyncio.Task[Any] | None = None

    def begin(self, restart: Callable[[], Awaitable[T]]) -> asyncio.Task[T]:
        """Raise the barrier now, and run ``restart()`` once the restarts before it ended;
        the barrier falls when the last one begun ends (failed or not)."""
        self.generation += 1
        previous = self._current
        task = asyncio.get_running_loop().create_task(self._run(previous, restart))
        self._current = task
        return task

    @property
    def under_way(self) -> bool:
        """Whether a restart is under way (a cheap test for the publish path)."""
        return self._current is not None

    async def wait(self) -> None:
        """Return once no restart is under way (whether or not they succeeded: their
        caller hears of a failure)."""
        while (current := self._current) is not None:
            with contextlib.suppress(BrokerError):
                await asyncio.shield(current)

    async def _run(
        self, previous: asyncio.Task[Any] | None, restart: Callable[[], Awaitable[T]]
    ) -> T:
        try:
            if previous is not None:
                with contextlib.suppress(BrokerError):
                    await asyncio.shield(previous)
            return await restart()
        finally:
            if self._current is asyncio.current_task():
                self._current = None
