"""``AdoptingStore`` (brokers/base.py) on the brokers a ring node stores in (memory,
sqlite): a channel handed over from another node keeps its positions, its idempotency
keys and its live delivery, and survives a restart of the sqlite file."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Literal

import pytest

from tests.support.clock import FakeClock
from tests.support.handler import RecordingHandler
from tidings.brokers.base import AdoptingStore
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Gap, Replay

HOUR_MS = 3_600_000
NAMESPACES = Namespaces(
    {NamespaceName("doc"): NamespaceOptions(history=HistoryOptions(100, HOUR_MS))}
)
DOC = ChannelName("doc:1")
GIVER_EPOCH = "giverEpoch1"

Kind = Literal["memory", "sqlite"]
Store = MemoryBroker | SqliteBroker


@pytest.fixture(params=["memory", "sqlite"])
def kind(request: pytest.FixtureRequest) -> Kind:
    value: Kind = request.param
    return value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_store(kind: Kind, directory: Path, clock: FakeClock) -> Store:
    if kind == "memory":
        return MemoryBroker(NAMESPACES, clock=clock, epoch_factory=lambda: "localEpoch")
    return SqliteBroker(
        directory, NAMESPACES, clock=clock, epoch_factory=lambda: "localEpoch", durability="fast"
    )


@contextlib.asynccontextmanager
async def running(
    kind: Kind, directory: Path, clock: FakeClock, handler: RecordingHandler
) -> AsyncIterator[Store]:
    store = make_store(kind, directory, clock)
    await store.start(handler)
    try:
        yield store
    finally:
        await store.close()


def given(
    first: int, last: int, *, key: Callable[[int], str | None] = lambda _n: None
) -> list[Publication]:
    """Publications the giver sequenced, ``first`` to ``last``."""
    return [
        Publication(DOC, GIVER_EPOCH, n, b'{"n":%d}' % n, FakeClock().now_ms(), key(n))
        for n in range(first, last + 1)
    ]


async def replay(store: Store, since: Position) -> list[int]:
    read = await store.history(DOC, since)
    assert isinstance(read.recovery, Replay)
    return [p.offset for p in read.recovery.publications]


async def test_adopting_store_is_implemented_by_memory_and_sqlite(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        assert isinstance(store, AdoptingStore)


async def test_adopt_keeps_the_givers_positions_and_publishing_continues_after_them(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        head = await store.adopt(DOC, GIVER_EPOCH, given(3, 5), top=5)
        assert head == Position(GIVER_EPOCH, 5)
        assert await replay(store, Position(GIVER_EPOCH, 2)) == [3, 4, 5]
        read = await store.history(DOC, Position(GIVER_EPOCH, 1))
        assert isinstance(read.recovery, Gap)  # 2 was not handed over
        result = await store.publish(DOC, b'{"n":6}')
        assert result.position == Position(GIVER_EPOCH, 6)
        assert DOC in await store.held_channels()


async def test_adopt_skips_what_is_held_and_appends_what_follows(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    handler = RecordingHandler()
    async with running(kind, tmp_path, clock, handler) as store:
        await store.subscribe(DOC)
        await store.adopt(DOC, GIVER_EPOCH, given(1, 3), top=3)
        head = await store.adopt(DOC, GIVER_EPOCH, given(2, 4), top=4)
        assert head == Position(GIVER_EPOCH, 4)
        head = await store.adopt(DOC, GIVER_EPOCH, given(4, 4), top=4)  # a resend
        assert head == Position(GIVER_EPOCH, 4)
        # Each newly stored publication reached the subscribed node once, in order.
        assert [p.offset for p in handler.items] == [1, 2, 3, 4]
        assert await replay(store, Position(GIVER_EPOCH, 0)) == [1, 2, 3, 4]


async def test_adopt_replaces_a_channel_held_in_another_epoch(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        for n in range(1, 9):
            await store.publish(DOC, b'{"old":%d}' % n)
        await store.adopt(DOC, GIVER_EPOCH, given(1, 2), top=2)
        assert await replay(store, Position(GIVER_EPOCH, 0)) == [1, 2]
        read = await store.history(DOC, Position("localEpoch", 8))
        assert isinstance(read.recovery, Gap)
        assert read.head == Position(GIVER_EPOCH, 2)


async def test_adopted_keys_make_a_retry_at_the_new_owner_a_duplicate(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    alice = ClientInfo("c1", "alice")

    def keyed(n: int) -> Publication:
        info = alice if n == 2 else None
        return Publication(DOC, GIVER_EPOCH, n, b"{}", clock.now_ms(), f"k{n}", info)

    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(DOC, GIVER_EPOCH, [keyed(1), keyed(2)], top=2)
        retried = await store.publish(DOC, b"{}", key="k1")
        assert retried.duplicate
        assert retried.position == Position(GIVER_EPOCH, 1)
        retried = await store.publish(DOC, b"{}", key="k2", info=alice)
        assert retried.duplicate
        assert retried.position == Position(GIVER_EPOCH, 2)
        fresh = await store.publish(DOC, b"{}", key="k2")  # the server's key space
        assert not fresh.duplicate
        assert fresh.position == Position(GIVER_EPOCH, 3)


async def test_adopt_of_a_channel_retaining_nothing_moves_its_head(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        head = await store.adopt(DOC, GIVER_EPOCH, [], top=7)
        assert head == Position(GIVER_EPOCH, 7)
        assert (await store.history(DOC)).head == Position(GIVER_EPOCH, 7)
        assert (await store.publish(DOC, b"{}")).position == Position(GIVER_EPOCH, 8)


async def test_adopted_channel_survives_a_restart_of_the_sqlite_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    async with running("sqlite", tmp_path, clock, RecordingHandler()) as store:
        for n in range(1, 4):
            await store.publish(DOC, b'{"old":%d}' % n)
        await store.adopt(DOC, GIVER_EPOCH, given(5, 6, key=lambda n: f"k{n}"), top=6)
    async with running("sqlite", tmp_path, clock, RecordingHandler()) as store:
        assert (await store.history(DOC)).head == Position(GIVER_EPOCH, 6)
        assert await replay(store, Position(GIVER_EPOCH, 4)) == [5, 6]
        assert (await store.publish(DOC, b"{}", key="k6")).duplicate
        assert await store.held_channels() == [DOC]
