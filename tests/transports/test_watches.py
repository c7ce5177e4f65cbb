"""Poll watches (transports/watches.py) on a real hub and memory broker, in-process: one
hub subscription per polled channel, kept current by fan-out; parked long polls woken
by a publication, by their time-out or by a gap; counted as clients only while they wait."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.publication import Position
from tidings.core.recovery import Replay
from tidings.hub.hub import Hub
from tidings.transports.watches import PollWatches

ROOM = ChannelName("room:watched")
WAIT_S = 30.0


@pytest.fixture
async def hub() -> Hub:
    hub = Hub(MemoryBroker(Namespaces(), epoch_factory=lambda: "E1"))
    await hub.start()
    return hub


@pytest.fixture
async def watches(hub: Hub) -> PollWatches:
    ids = itertools.count(1)
    return PollWatches(hub, lambda: f"watch.{next(ids)}")


async def test_a_watch_follows_publications_and_answers_from_memory(
    hub: Hub, watches: PollWatches
) -> None:
    for n in range(3):
        await hub.publish(ROOM, b"%d" % n)
    await watches.ensure(ROOM, Position("E1", 1))
    view = watches.view(ROOM)
    assert view is not None
    assert view.head == Position("E1", 3)
    await hub.publish(ROOM, b"3")
    assert view.head == Position("E1", 4)
    answer = view.since(Position("E1", 1), 10)
    assert isinstance(answer, Replay)
    assert [p.offset for p in answer.publications] == [2, 3, 4]


async def test_one_hub_subscription_serves_every_ensure_of_a_channel(
    hub: Hub, watches: PollWatches
) -> None:
    await asyncio.gather(*(watches.ensure(ROOM, None) for _ in range(5)))
    assert hub.has_subscribers(ROOM)
    assert hub.channels() == {}  # a watch no poll waits on stands for no client


async def test_a_publication_wakes_every_parked_poll_and_they_count_as_clients_meanwhile(
    hub: Hub, watches: PollWatches
) -> None:
    await watches.ensure(ROOM, None)
    woken: list[int] = []
    for index in range(3):
        watches.park([ROOM], WAIT_S, lambda index=index: woken.append(index))  # type: ignore[misc]
    assert hub.channels() == {ROOM: 3}
    await hub.publish(ROOM, b'"wake"')
    assert sorted(woken) == [0, 1, 2]
    assert hub.channels() == {}


async def test_a_parked_poll_wakes_when_its_wait_runs_out(watches: PollWatches) -> None:
    await watches.ensure(ROOM, None)
    woken = asyncio.Event()
    watches.park([ROOM], 0.01, woken.set)
    await asyncio.wait_for(woken.wait(), WAIT_S)


async def test_a_cancelled_poll_is_never_called_back(hub: Hub, watches: PollWatches) -> None:
    await watches.ensure(ROOM, None)
    called: list[bool] = []
    watches.park([ROOM], WAIT_S, lambda: called.append(True)).cancel()
    await hub.publish(ROOM, b"1")
    assert called == []
    assert hub.channels() == {}


async def test_a_gap_drops_the_watch_and_wakes_its_polls(hub: Hub, watches: PollWatches) -> None:
    await watches.ensure(ROOM, None)
    woken: list[bool] = []
    watches.park([ROOM], WAIT_S, lambda: woken.append(True))
    subscriptions = hub._registry.subscriptions(ROOM)
    assert subscriptions is not None
    [watch] = [s.subscriber for s in subscriptions.values()]
    watch.report_gap(ROOM)  # what the hub does when the broker lost continuity
    assert woken == [True]
    assert watches.view(ROOM) is None  # the next poll reads the broker
    await asyncio.wait_for(watches.wait_left(), WAIT_S)  # the unsubscribe is its own task
    assert not hub.has_subscribers(ROOM)


# -- the cap ------------------------------------------------------------------------------


def room(n: int) -> ChannelName:
    return ChannelName(f"room:{n}")


async def test_past_the_cap_the_least_recently_used_watch_is_let_go(hub: Hub) -> None:
    ids = itertools.count(1)
    watches = PollWatches(hub, lambda: f"watch.{next(ids)}", max_watches=3)
    for n in range(3):
        await watches.ensure(room(n), None)
    assert watches.view(room(0)) is not None  # room:0 used again: room:1 is now the oldest
    await watches.ensure(room(3), None)
    await watches.wait_left()
    assert len(watches) == 3
    assert watches.view(room(1)) is None
    assert not hub.has_subscribers(room(1))
    assert all(watches.view(room(n)) is not None for n in (0, 2, 3))


async def test_a_watch_a_long_poll_waits_on_is_never_let_go_for_a_new_one(hub: Hub) -> None:
    ids = itertools.count(1)
    watches = PollWatches(hub, lambda: f"watch.{next(ids)}", max_watches=2)
    await watches.ensure(room(0), None)
    await watches.ensure(room(1), None)
    woken: list[str] = []
    watches.park([room(0)], WAIT_S, lambda: woken.append("0"))
    watches.park([room(1)], WAIT_S, lambda: woken.append("1"))
    await watches.ensure(room(2), None)
    assert woken == []
    assert watches.view(room(2)) is None  # not watched: answered from the broker
    assert len(watches) == 2


def test_a_cap_below_one_is_refused(hub: Hub) -> None:
    with pytest.raises(ValueError, match="max_watches"):
        PollWatches(hub, str, max_watches=0)
