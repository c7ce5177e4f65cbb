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
from tidings.core.dedupe import DedupeOptions, RememberedKey, dedupe_key
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Gap, Replay

HOUR_MS = 3_600_000
NAMESPACES = Namespaces(
    {
        NamespaceName("doc"): NamespaceOptions(history=HistoryOptions(100, HOUR_MS)),
        NamespaceName("short"): NamespaceOptions(history=HistoryOptions(2, HOUR_MS)),
        NamespaceName("bare"): NamespaceOptions(history=HistoryOptions(0, HOUR_MS)),
    }
)
DOC = ChannelName("doc:1")
SHORT = ChannelName("short:1")  # retains its last 2 publications
BARE = ChannelName("bare:1")  # retains none
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


def make_store(
    kind: Kind, directory: Path, clock: FakeClock, dedupe: DedupeOptions | None = None
) -> Store:
    if kind == "memory":
        return MemoryBroker(
            NAMESPACES, clock=clock, dedupe=dedupe, epoch_factory=lambda: "localEpoch"
        )
    return SqliteBroker(
        directory,
        NAMESPACES,
        clock=clock,
        dedupe=dedupe,
        epoch_factory=lambda: "localEpoch",
        durability="fast",
    )


@contextlib.asynccontextmanager
async def running(
    kind: Kind,
    directory: Path,
    clock: FakeClock,
    handler: RecordingHandler,
    dedupe: DedupeOptions | None = None,
) -> AsyncIterator[Store]:
    store = make_store(kind, directory, clock, dedupe)
    await store.start(handler)
    try:
        yield store
    finally:
        await store.close()


def given(
    first: int, last: int, *, key: Callable[[int], str | None] = lambda _n: None
) -> list[Publication]:
    """Publications the giver sequenced in ``DOC``, ``first`` to ``last``."""
    return given_in(DOC, first, last, key=key)


def given_in(
    channel: ChannelName,
    first: int,
    last: int,
    *,
    key: Callable[[int], str | None] = lambda _n: None,
) -> list[Publication]:
    """Publications the giver sequenced in ``channel``, ``first`` to ``last``."""
    return [
        Publication(channel, GIVER_EPOCH, n, b'{"n":%d}' % n, FakeClock().now_ms(), key(n))
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


# The giver's dedupe window moves whole (``remembered_keys``, ``adopt(keys=...)``): keys
# of publications evicted from history, or never retained, included.

WINDOW_MS = DedupeOptions().window_ms


async def test_remembered_keys_include_those_of_publications_evicted_from_history(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    alice = ClientInfo("c1", "alice")
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        first_ts = clock.now_ms()
        await store.publish(SHORT, b"{}", key="k1")
        clock.advance(10)
        await store.publish(SHORT, b"{}", key="k2", info=alice)
        clock.advance(10)
        await store.publish(SHORT, b"{}")
        await store.publish(SHORT, b"{}", key="k4")  # 1 and 2 are evicted now
        read = await store.history(SHORT)
        assert isinstance(read.recovery, Replay)
        assert [p.offset for p in read.recovery.publications] == [3, 4]
        assert await store.remembered_keys(SHORT) == (
            RememberedKey("k1", 1, first_ts),
            RememberedKey(dedupe_key("k2", alice), 2, first_ts + 10),
            RememberedKey("k4", 4, first_ts + 20),
        )
        clock.advance(WINDOW_MS - 10)  # k1 is past the window, k2 exactly at its edge
        assert [k.key for k in await store.remembered_keys(SHORT)] == [
            dedupe_key("k2", alice),
            "k4",
        ]
        assert await store.remembered_keys(ChannelName("short:never")) == ()


async def test_adopted_keys_of_a_channel_retaining_nothing_make_retries_duplicates(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    alice = ClientInfo("c1", "alice")
    now = clock.now_ms()
    keys = [RememberedKey("k3", 3, now - 20), RememberedKey(dedupe_key("k5", alice), 5, now)]
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        head = await store.adopt(BARE, GIVER_EPOCH, [], top=6, keys=keys)
        assert head == Position(GIVER_EPOCH, 6)
        retried = await store.publish(BARE, b"{}", key="k3")
        assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, 3))
        retried = await store.publish(BARE, b"{}", key="k5", info=alice)
        assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, 5))
        fresh = await store.publish(BARE, b"{}", key="k5")  # the server's key space
        assert (fresh.duplicate, fresh.position) == (False, Position(GIVER_EPOCH, 7))


async def test_adopted_keys_expire_at_their_original_time_not_at_adoption(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    now = clock.now_ms()
    keys = [RememberedKey("old", 1, now - WINDOW_MS + 50), RememberedKey("young", 2, now)]
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(SHORT, GIVER_EPOCH, [], top=2, keys=keys)
        clock.advance(50)  # "old" is exactly window-old: still remembered
        assert (await store.publish(SHORT, b"{}", key="old")).duplicate
        clock.advance(1)
        late = await store.publish(SHORT, b"{}", key="old")
        assert (late.duplicate, late.position) == (False, Position(GIVER_EPOCH, 3))
        assert (await store.publish(SHORT, b"{}", key="young")).position.offset == 2


async def test_adopted_keys_join_those_of_the_adopted_publications(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    evicted = [RememberedKey("k1", 1, clock.now_ms()), RememberedKey("k2", 2, clock.now_ms())]
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(
            SHORT, GIVER_EPOCH, given_in(SHORT, 3, 4, key=lambda n: f"k{n}"), top=4, keys=evicted
        )
        for n in range(1, 5):
            retried = await store.publish(SHORT, b"{}", key=f"k{n}")
            assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, n))
        assert [k.key for k in await store.remembered_keys(SHORT)] == ["k1", "k2", "k3", "k4"]


async def test_adopted_keys_above_the_head_held_are_left_to_their_publications(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    keys = [RememberedKey("k2", 2, clock.now_ms()), RememberedKey("k9", 9, clock.now_ms())]
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(BARE, GIVER_EPOCH, [], top=4, keys=keys)
        assert (await store.publish(BARE, b"{}", key="k2")).duplicate
        assert not (await store.publish(BARE, b"{}", key="k9")).duplicate


async def test_adopted_keys_are_bounded_by_max_keys_as_publishing_is(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    now = clock.now_ms()
    keys = [RememberedKey(f"k{n}", n, now + n) for n in range(1, 6)]
    dedupe = DedupeOptions(max_keys=3)
    async with running(kind, tmp_path, clock, RecordingHandler(), dedupe) as store:
        await store.adopt(BARE, GIVER_EPOCH, [], top=5, keys=keys)
        clock.advance(10)
        assert [k.key for k in await store.remembered_keys(BARE)] == ["k3", "k4", "k5"]
        assert not (await store.publish(BARE, b"{}", key="k1")).duplicate


async def test_adopted_keys_of_evicted_publications_survive_a_restart_of_the_sqlite_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    keys = [RememberedKey("k1", 1, clock.now_ms()), RememberedKey("k2", 2, clock.now_ms())]
    async with running("sqlite", tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(BARE, GIVER_EPOCH, [], top=3, keys=keys)
    async with running("sqlite", tmp_path, clock, RecordingHandler()) as store:
        retried = await store.publish(BARE, b"{}", key="k2")
        assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, 2))
        assert await store.remembered_keys(BARE) == tuple(keys)


# A fresh snapshot whose top is past the head held, in the same epoch, restarts the
# channel past a hole (the giver's history evicted what it had not sent yet). The keys
# remembered name offsets of that epoch and stay true: the giver sends only the keys
# new since, so they must stay. Another epoch's keys name offsets the channel no longer
# has: they go.


async def test_a_restart_past_a_hole_in_the_same_epoch_keeps_the_adopted_keys(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    alice = ClientInfo("c1", "alice")
    now = clock.now_ms()
    keys = [RememberedKey("k1", 1, now), RememberedKey(dedupe_key("k2", alice), 2, now)]
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(BARE, GIVER_EPOCH, [], top=2, keys=keys)
        head = await store.adopt(BARE, GIVER_EPOCH, [], top=5, keys=[RememberedKey("k5", 5, now)])
        assert head == Position(GIVER_EPOCH, 5)
        retried = await store.publish(BARE, b"{}", key="k1")
        assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, 1))
        retried = await store.publish(BARE, b"{}", key="k2", info=alice)
        assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, 2))
        retried = await store.publish(BARE, b"{}", key="k5")
        assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, 5))
        fresh = await store.publish(BARE, b"{}", key="k6")
        assert (fresh.duplicate, fresh.position) == (False, Position(GIVER_EPOCH, 6))


async def test_a_restart_past_a_hole_in_the_same_epoch_keeps_the_keys_of_its_publications(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(SHORT, GIVER_EPOCH, given_in(SHORT, 1, 2, key=lambda n: f"k{n}"), top=2)
        head = await store.adopt(
            SHORT, GIVER_EPOCH, given_in(SHORT, 5, 5, key=lambda n: f"k{n}"), top=5
        )
        assert head == Position(GIVER_EPOCH, 5)
        read = await store.history(SHORT, Position(GIVER_EPOCH, 0))
        assert isinstance(read.recovery, Gap)  # 3 and 4 never came: a hole
        for n in (1, 2, 5):
            retried = await store.publish(SHORT, b"{}", key=f"k{n}")
            assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, n))
        assert [k.key for k in await store.remembered_keys(SHORT)] == ["k1", "k2", "k5"]


async def test_keys_kept_past_a_hole_in_the_same_epoch_survive_a_restart_of_the_sqlite_file(
    tmp_path: Path, clock: FakeClock
) -> None:
    keys = [RememberedKey("k1", 1, clock.now_ms())]
    async with running("sqlite", tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(SHORT, GIVER_EPOCH, given_in(SHORT, 2, 2, key=lambda n: f"k{n}"), top=2)
        await store.adopt(SHORT, GIVER_EPOCH, [], top=2, keys=keys)
        await store.adopt(SHORT, GIVER_EPOCH, [], top=7)
    async with running("sqlite", tmp_path, clock, RecordingHandler()) as store:
        assert (await store.history(SHORT)).head == Position(GIVER_EPOCH, 7)
        for n in (1, 2):
            retried = await store.publish(SHORT, b"{}", key=f"k{n}")
            assert (retried.duplicate, retried.position) == (True, Position(GIVER_EPOCH, n))


async def test_a_restart_in_another_epoch_forgets_the_keys_remembered(
    kind: Kind, tmp_path: Path, clock: FakeClock
) -> None:
    keys = [RememberedKey("k1", 1, clock.now_ms())]
    async with running(kind, tmp_path, clock, RecordingHandler()) as store:
        await store.adopt(SHORT, GIVER_EPOCH, given_in(SHORT, 2, 2, key=lambda n: f"k{n}"), top=2)
        await store.adopt(SHORT, GIVER_EPOCH, [], top=2, keys=keys)
        head = await store.adopt(SHORT, "otherEpoch", [], top=7)
        assert head == Position("otherEpoch", 7)
        assert await store.remembered_keys(SHORT) == ()
        for n in (1, 2):
            fresh = await store.publish(SHORT, b"{}", key=f"k{n}")
            assert (fresh.duplicate, fresh.position) == (False, Position("otherEpoch", 7 + n))
