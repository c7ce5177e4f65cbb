"""Group commit for the PostgreSQL broker's publishes: publishes waiting on a node go to
PostgreSQL together, in one transaction. I/O with psycopg, through the broker's pool.

Why: every publishing transaction NOTIFYs, and PostgreSQL serialises the commits of
notifying transactions on one lock held through the commit's WAL flush, so one
publish per transaction caps a whole database at one flush per publish, whatever the
number of connections. A batch pays one flush and one hold of that lock for all of
its publishes.

``WRITERS`` tasks each take up to ``MAX_BATCH`` waiting publishes and run them in one
round trip (pipeline mode) and one transaction: a batch commits whole or not at all,
so each publish's caller is answered with its own row only once the commit is done,
and every caller of a failed batch is told it failed. A lone publish runs as a
single-statement transaction (one round trip fewer). Each batch calls the publish
function in channel order, so that batches, on this node or any other, lock channel
rows in one order and never deadlock; publishes of one channel keep their order of
arrival. A caller that gives up before its publish was taken is removed, never sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from tidings.brokers.postgres_rows import Row
from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

MAX_BATCH: Final = 256
WRITERS: Final = 4


class PublishNotSent(BrokerError):
    """The publish was given up on before it was sent: it will not be published."""


class PublishUnanswered(BrokerError):
    """The publish was sent but not answered in time: it may have been published."""


@dataclass(slots=True, eq=False)
class _Waiting:
    channel: str
    params: Sequence[object]
    answer: asyncio.Future[Row]
    taken: bool = False  # a writer took it: it may be sent


class PublishBatcher:
    """Sends waiting publishes together; see the module docstring."""

    def __init__(
        self, pool: Callable[[], AsyncConnectionPool], statement: sql.Composed, writers: int
    ) -> None:
        self._pool = pool
        self._statement = statement
        self._writers = writers
        self._waiting: deque[_Waiting] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start the writers."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._write(), name="tidings-postgres-writer")
                for _ in range(self._writers)
            ]

    async def close(self) -> None:
        """Stop the writers; publishes still waiting fail, unsent."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.answer.done():
                waiting.answer.set_exception(PublishNotSent("the broker was closed"))

    async def publish(self, channel: str, params: Sequence[object], timeout_s: float) -> Row:
        """Publish with ``params`` (the publish function's) and return its row.

        Raises:
            PublishNotSent: not taken within ``timeout_s``; it was not sent.
            PublishUnanswered: taken but not answered within ``timeout_s``.
            psycopg.Error, OSError: its batch failed; nothing of it was committed.
        """
        waiting = _Waiting(channel, params, asyncio.get_running_loop().create_future())
        self._waiting.append(waiting)
        self._wakeup.set()
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiting.answer)
        except TimeoutError:
            waiting.answer.cancel()  # the writer will not answer it
            if not waiting.taken:
                with contextlib.suppress(ValueError):
                    self._waiting.remove(waiting)
                raise PublishNotSent(f"not sent within {timeout_s:g} s") from None
            raise PublishUnanswered(f"not answered within {timeout_s:g} s") from None

    async def _write(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            count = min(MAX_BATCH, len(self._waiting))
            batch = [self._waiting.popleft() for _ in range(count)]
            for waiting in batch:
                waiting.taken = True
            # One lock order for every batch (see the module docstring); sort is stable.
            batch.sort(key=lambda waiting: waiting.channel)
            try:
                rows = await self._send([waiting.params for waiting in batch])
            except (psycopg.Error, OSError) as exc:
                for waiting in batch:
                    if not waiting.answer.done():
                        waiting.answer.set_exception(exc)
                continue
            for waiting, row in zip(batch, rows, strict=True):
                if not waiting.answer.done():
                    waiting.answer.set_result(row)

    async def _send(self, batch: list[Sequence[object]]) -> list[Row]:
        async with self._pool().connection() as conn:
            if len(batch) == 1:  # autocommit: the statement is its own transaction
                row = await (await conn.execute(self._statement, batch[0])).fetchone()
                return [_present(row)]
            rows: list[Row] = []
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(self._statement, batch, returning=True)
                while True:
                    rows.append(_present(await cursor.fetchone()))
                    if not cursor.nextset():
                        break
            return rows  # the transaction committed on leaving its block


def _present(row: Row | None) -> Row:
    if row is None:  # the publish function returns one row per call
        raise psycopg.ProgrammingError("the publish function returned no row")
    return row
