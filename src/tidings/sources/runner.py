"""Running a node's sources: checked at start, each in its own task, stopped on shutdown.

asyncio tasks, no I/O of its own. ``start`` checks every source first (a missing table
or topic stops the node with one line, before anything is published), then runs each
until ``stop``. A source handles its own reconnects; if ``run`` ends with an error all
the same, the error is logged and the source is run again after a backoff: a source
never takes the node down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Sequence
from typing import Final

from tidings.core.backoff import Backoff
from tidings.core.namespace import Namespaces
from tidings.sources.base import Source
from tidings.sources.publisher import NodePublisher, PublishPath

logger = logging.getLogger(__name__)

RESTART_BASE_S: Final = 0.5
RESTART_CAP_S: Final = 30.0


async def check_sources(sources: Sequence[Source]) -> None:
    """Check each source (``Source.check``), in order.

    Raises:
        ConfigError: the first source whose check failed.
    """
    for source in sources:
        await source.check()


class SourceRunner:
    """The sources of one node."""

    def __init__(
        self, sources: Sequence[Source], publish: PublishPath, namespaces: Namespaces
    ) -> None:
        """Run ``sources``, publishing through ``publish`` (the node's own path: on the
        channel's owner in the hashing mode)."""
        self._sources = list(sources)
        self._publish = publish
        self._namespaces = namespaces
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sources(self) -> list[Source]:
        """The node's sources."""
        return list(self._sources)

    async def start(self) -> None:
        """Check every source, then run each in a task of its own.

        Raises:
            ConfigError: a source's ``check`` failed (nothing was started).
        """
        await check_sources(self._sources)
        for source in self._sources:
            publisher = NodePublisher(source.name, self._publish, self._namespaces)
            task = asyncio.create_task(self._run(source, publisher), name=f"source {source.name}")
            self._tasks.append(task)
            logger.info("source %s started", source.name)

    async def stop(self) -> None:
        """Cancel every source and wait for each to end; idempotent."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, source: Source, publisher: NodePublisher) -> None:
        backoff = Backoff(base_s=RESTART_BASE_S, cap_s=RESTART_CAP_S, uniform=random.uniform)
        while True:
            try:
                await source.run(publisher)
            except Exception:
                # A task boundary: whatever went wrong is this source's alone.
                delay_s = backoff.next_delay_s()
                logger.exception(
                    "source %s failed; running it again in %.1f s", source.name, delay_s
                )
            else:
                delay_s = backoff.next_delay_s()
                logger.warning("source %s ended; running it again in %.1f s", source.name, delay_s)
            await asyncio.sleep(delay_s)
