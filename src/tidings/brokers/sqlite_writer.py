"""The one thread in which the ``sqlite`` broker does all of its disk I/O.

Blocking jobs (stdlib ``sqlite3`` calls on ``sqlite_store``) run here, never on the event
loop: the loop queues a job and awaits a future of its result. Jobs run one at a time in
submission order, which the broker relies on: a channel's load and its writes, and one
batch after another (``sqlite_commit``), reach the file in the order they were queued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import TypeVar

from tidings.errors import BrokerError

T = TypeVar("T")


class SqliteWriter:
    """One thread running blocking jobs in submission order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn`` for the thread; return a future of its result on the running loop."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def job() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as exc:  # handed to the awaiting side
                    future.set_exception(exc)

        self._jobs.put(job)
        return asyncio.wrap_future(future, loop=asyncio.get_running_loop())

    async def run(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` in the thread and await it; backend errors become ``BrokerError``."""
        try:
            return await asyncio.shield(self.submit(fn))
        except (sqlite3.Error, OSError) as exc:
            raise BrokerError(f"{what} failed: {exc}") from exc

    def stop(self) -> None:
        """End the thread once the queued jobs ran, and wait for it to return."""
        self._jobs.put(None)
        # The caller awaited the last job already: the thread is only returning.
        self._thread.join()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            job()
