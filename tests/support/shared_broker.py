"""What the tests of a broker shared by many nodes (Redis, NATS) have in common: their
namespaces, fresh channels and numbered data, bounded polls of an observable condition,
and a server process of the test's own, stopped however the test ends.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol, TypeVar

import pytest

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Publication

HOUR_MS: Final = 3_600_000
SMALL_HISTORY: Final = 3
POLL_LIMIT_S: Final = 20.0
# ``room`` keeps more than any test publishes; ``small`` evicts after SMALL_HISTORY.
NAMESPACES: Final = Namespaces(
    {
        NamespaceName("room"): NamespaceOptions(history=HistoryOptions(1_000, HOUR_MS)),
        NamespaceName("small"): NamespaceOptions(history=HistoryOptions(SMALL_HISTORY, HOUR_MS)),
    }
)


def unique_channel(namespace: str = "room") -> ChannelName:
    """A channel no other test (or earlier run) published to."""
    return ChannelName(f"{namespace}:{secrets.token_hex(6)}")


def data(n: int) -> bytes:
    """The data of the ``n``-th publication of a test: ``{"n": n}``."""
    return b'{"n":%d}' % n


def offsets(publications: list[Publication]) -> list[int]:
    return [p.offset for p in publications]


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` (an observable condition) until true; fail after ``POLL_LIMIT_S``."""
    try:
        async with asyncio.timeout(POLL_LIMIT_S):
            while not await check():  # noqa: ASYNC110  (a poll: no event to await)
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


async def is_not(ready: Awaitable[bool]) -> bool:
    """The negation of an awaited answer: ``eventually(lambda: is_not(b.is_ready()), ...)``."""
    return not await ready


class _Stoppable(Protocol):
    def stop(self) -> None: ...


StoppableT = TypeVar("StoppableT", bound=_Stoppable)


@contextmanager
def stopped_after(server: StoppableT) -> Iterator[StoppableT]:
    """Yield ``server`` (a ``redis-server`` or ``nats-server`` of the test's own, started
    or not yet) and stop it on exit, whatever the test did meanwhile."""
    try:
        yield server
    finally:
        server.stop()
