"""Counting what faults do to acknowledged publications, as independent clients see it.

A ``Ledger`` records every publication a publisher was answered 200 for (its number
``n``, the position it was given, when). A ``Listener`` is a real subscribing client
(``tidings.client.subscribe``) recording what it received and each ``GapNotice``
(``recovered: false``). ``tally`` then classifies, per listener, every acknowledged
publication as *delivered* (received, with its data), *announced* (not received, but a
gap notice came after it was acknowledged, or named a position at or past it in its
epoch: either way the client knows to refetch it), *replaced*
(the listener received other data at its position) or *lost* (none of these: a silent
loss). The ledger also counts positions *reissued*: given to two publications.

The data of publication ``n`` is ``{"n": n}`` and it is published with the key ``n<n>``,
so a publisher retrying after an error never makes it twice (while Redis keeps the key).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Final

import httpx

from tidings.client import ApiClient, Backoff, GapNotice, subscribe
from tidings.core.publication import Position, Publication
from tidings.errors import RequestError

WAIT_S: Final = 30.0
RETRY_DELAY_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class Counts:
    """What one listener made of the acknowledged publications."""

    delivered: int
    announced: int
    replaced: int
    lost: int


@dataclass
class Ledger:
    """Every acknowledged publication: ``n`` -> (position, monotonic time of the 200)."""

    acked: dict[int, tuple[Position, float]] = field(default_factory=dict)

    def reissued(self) -> int:
        """How many acknowledged positions were given to more than one publication."""
        positions = [position for position, _ in self.acked.values()]
        return len(positions) - len(set(positions))


@dataclass
class Listener:
    """A subscribing client that records what it receives."""

    received: dict[int, Position] = field(default_factory=dict)
    at: dict[Position, int] = field(default_factory=dict)
    gaps: list[float] = field(default_factory=list)
    gap_positions: list[Position] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def receive(self, event: Publication | GapNotice) -> None:
        if isinstance(event, GapNotice):
            self.gaps.append(time.monotonic())
            self.gap_positions.append(event.position)
        else:
            n = int(json.loads(event.data)["n"])
            self.received.setdefault(n, event.position)
            self.at.setdefault(event.position, n)
        self.changed.set()

    async def wait_for(self, n: int) -> None:
        """Wait until publication ``n`` arrived (bounded)."""
        async with asyncio.timeout(WAIT_S):
            while n not in self.received:
                self.changed.clear()
                await self.changed.wait()


def tally(ledger: Ledger, listener: Listener) -> Counts:
    """Classify every acknowledged publication for ``listener`` (see the module docstring)."""
    delivered = announced = replaced = lost = 0
    for n, (position, acked_at) in ledger.acked.items():
        if listener.at.get(position, n) != n:
            replaced += 1
        elif n in listener.received:
            delivered += 1
        elif any(gap >= acked_at for gap in listener.gaps) or any(
            # Made before the client resumed, though its 200 came back after.
            told.epoch == position.epoch and told.offset >= position.offset
            for told in listener.gap_positions
        ):
            announced += 1
        else:
            lost += 1
    return Counts(delivered, announced, replaced, lost)


class Publisher:
    """Publishes ``{"n": n}`` through one node's API, retrying each until answered 200."""

    def __init__(self, api: ApiClient, channel: str, ledger: Ledger) -> None:
        self._api = api
        self._channel = channel
        self._ledger = ledger
        self.next_n = 0

    async def publish(self, count: int, between: Callable[[], None] | None = None) -> None:
        """Publish the next ``count`` publications, one after another."""
        for _ in range(count):
            n = self.next_n
            async with asyncio.timeout(WAIT_S):
                while True:
                    try:
                        position = await self._api.publish(self._channel, {"n": n}, key=f"n{n}")
                        break
                    except (RequestError, httpx.HTTPError):
                        await asyncio.sleep(RETRY_DELAY_S)  # a fault under way: retry
            self._ledger.acked[n] = (position, time.monotonic())
            self.next_n += 1
            if between is not None:
                between()


async def settle(publisher: Publisher, listeners: list[Listener]) -> None:
    """Publish until every listener received one of these last publications: then every
    client has recovered from the fault, and what it did not get of the earlier ones it
    never will (it was told of the gap, or it is lost)."""
    first = publisher.next_n
    async with asyncio.timeout(WAIT_S):
        while not all(max(listener.received, default=-1) >= first for listener in listeners):
            await publisher.publish(1)
            await asyncio.sleep(RETRY_DELAY_S)  # a pace, not a wait for anything


async def listen(stack: AsyncExitStack, url: str, channel: str) -> Listener:
    """Subscribe a ``Listener`` to ``channel`` on the node at ``url`` over WebSocket."""
    listener = Listener()
    subscription = await stack.enter_async_context(
        subscribe(url, channel, transport="ws", backoff=Backoff(base_s=0.05, cap_s=0.5))
    )

    async def pump() -> None:
        async for event in subscription:
            listener.receive(event)

    task = asyncio.get_running_loop().create_task(pump())
    # Subscribed once the client holds a position there (a bounded poll: no event tells).
    async with asyncio.timeout(WAIT_S):
        while not subscription.positions:  # noqa: ASYNC110  (a poll: no event to await)
            await asyncio.sleep(0.02)

    async def stop() -> None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
    return listener


def print_summary(fault: str, counts: list[Counts]) -> None:
    """Write the counts where ``pytest -m chaos -s`` shows them (docs/reliability.md)."""
    for index, found in enumerate(counts):
        print(f"{fault}: listener {index}: {found}")
