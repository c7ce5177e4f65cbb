"""The relay broker's own rules, with the test as its upstream (tests/support/upstream.py):
what it hands on, what it caches, and what it answers from the cache.

In the first tests the relay's API client points at a port nothing listens on, so a
history read that went upstream would fail (``BrokerUnavailable``): every answer there
is the cache's. The last ones give it an upstream that retains publications
(``RetainingApi``) and count what it is asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.support.handler import RecordingHandler
from tests.support.server import free_port
from tests.support.upstream import FollowingLink, RetainingApi
from tidings.brokers.relay import RelayBroker
from tidings.clock import SystemClock
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, Replay
from tidings.errors import BrokerError, BrokerUnavailable

EPOCH = "up1"
HISTORY_SIZE = 4
CHANNEL = ChannelName("room:1")
NAMESPACES = Namespaces(
    {NamespaceName("room"): NamespaceOptions(history=HistoryOptions(HISTORY_SIZE, 3_600_000))}
)


# Made now: the cache keeps publications for the namespace's history_ttl from their ts.
NOW_MS = SystemClock().now_ms()


def publication(offset: int, epoch: str = EPOCH) -> Publication:
    return Publication(CHANNEL, epoch, offset, b'{"n":%d}' % offset, NOW_MS)


@pytest.fixture
def link() -> FollowingLink:
    return FollowingLink(Position(EPOCH, 10))


@pytest.fixture
def handler() -> RecordingHandler:
    return RecordingHandler()


@pytest.fixture
async def relay(link: FollowingLink, handler: RecordingHandler) -> AsyncIterator[RelayBroker]:
    broker = RelayBroker(f"relay+ws://127.0.0.1:{free_port()}", NAMESPACES, link=link)
    await broker.start(handler)
    try:
        yield broker
    finally:
        await broker.close()


def offsets(publications: tuple[Publication, ...] | list[Publication]) -> list[int]:
    return [p.offset for p in publications]


async def test_a_channel_is_followed_once_upstream_while_subscribed(
    relay: RelayBroker, link: FollowingLink
) -> None:
    await relay.subscribe(CHANNEL)
    await relay.subscribe(CHANNEL)
    await relay.unsubscribe(CHANNEL)
    await relay.unsubscribe(CHANNEL)

    assert (link.followed, link.unfollowed) == ([CHANNEL], [CHANNEL])


async def test_publications_are_handed_on_unchanged_and_answered_from_the_cache(
    relay: RelayBroker, link: FollowingLink, handler: RecordingHandler
) -> None:
    await relay.subscribe(CHANNEL)
    received = [publication(offset) for offset in range(11, 17)]
    for item in received:
        link.listener.receive_publication(item)

    recent = await relay.history(CHANNEL, Position(EPOCH, 13))
    at_head = await relay.history(CHANNEL, Position(EPOCH, 16))
    page = await relay.history(CHANNEL, limit=2)

    assert handler.publications == received
    assert recent.head == Position(EPOCH, 16)
    assert recent.recovery == Replay(tuple(received[3:]))
    assert at_head.recovery == Replay(())
    assert page.recovery == Replay(tuple(received[-2:]))


async def test_what_the_cache_no_longer_holds_is_asked_upstream(
    relay: RelayBroker, link: FollowingLink
) -> None:
    await relay.subscribe(CHANNEL)
    for offset in range(11, 11 + HISTORY_SIZE + 2):  # 11 and 12 are evicted
        link.listener.receive_publication(publication(offset))

    kept = await relay.history(CHANNEL, Position(EPOCH, 12))
    with pytest.raises(BrokerUnavailable):  # upstream: nothing listens there
        await relay.history(CHANNEL, Position(EPOCH, 11))

    assert kept.recovery == Replay(tuple(publication(offset) for offset in range(13, 17)))


async def test_an_overlap_after_a_resubscribe_is_not_handed_on_twice(
    relay: RelayBroker, link: FollowingLink, handler: RecordingHandler
) -> None:
    await relay.subscribe(CHANNEL)
    link.listener.receive_publication(publication(11))
    resume_from = link.listener.position_of(CHANNEL)
    # The upstream replays after the position given, and a live duplicate follows.
    link.listener.receive_subscribed(
        CHANNEL, Position(EPOCH, 13), True, (publication(12), publication(13))
    )
    link.listener.receive_publication(publication(13))
    link.listener.receive_publication(publication(14))

    assert resume_from == Position(EPOCH, 11)
    assert offsets(handler.publications) == [11, 12, 13, 14]


async def test_an_upstream_that_could_not_recover_restarts_the_cache_at_its_head(
    relay: RelayBroker, link: FollowingLink, handler: RecordingHandler
) -> None:
    await relay.subscribe(CHANNEL)
    link.listener.receive_publication(publication(11))
    link.listener.receive_subscribed(CHANNEL, Position(EPOCH, 30), False, ())
    link.listener.receive_publication(publication(31))

    read = await relay.history(CHANNEL, Position(EPOCH, 30))

    # 31 is handed on as it came: the hub sees it does not follow 11 and reports the gap.
    assert offsets(handler.publications) == [11, 31]
    assert (read.head, read.recovery) == (Position(EPOCH, 31), Replay((publication(31),)))


async def test_the_hub_hears_of_a_gap_when_the_upstream_could_not_recover_not_before(
    relay: RelayBroker, link: FollowingLink
) -> None:
    gaps: list[ChannelName] = []
    relay.listen_gaps(gaps.append)
    await relay.subscribe(CHANNEL)  # the first answer: no position held, no gap
    link.listener.receive_publication(publication(11))
    link.listener.receive_subscribed(CHANNEL, Position(EPOCH, 12), True, (publication(12),))
    told_before = list(gaps)
    link.listener.receive_subscribed(CHANNEL, Position(EPOCH, 30), False, ())

    assert (told_before, gaps) == ([], [CHANNEL])


async def test_a_publication_of_another_epoch_starts_the_cache_again(
    relay: RelayBroker, link: FollowingLink, handler: RecordingHandler
) -> None:
    await relay.subscribe(CHANNEL)
    link.listener.receive_publication(publication(11))
    link.listener.receive_publication(publication(1, epoch="up2"))

    read = await relay.history(CHANNEL, Position("up2", 0))
    # Whether the old epoch's position is a gap is the upstream's to say: it is asked.
    with pytest.raises(BrokerUnavailable):
        await relay.history(CHANNEL, Position(EPOCH, 11))

    assert handler.publications == [publication(11), publication(1, epoch="up2")]
    assert read.recovery == Replay((publication(1, epoch="up2"),))


async def test_a_channel_is_not_followed_while_the_upstream_is_unreachable(
    relay: RelayBroker, link: FollowingLink
) -> None:
    link.connected = False

    with pytest.raises(BrokerError):
        await relay.subscribe(CHANNEL)

    assert link.followed == []
    assert not await relay.is_ready()


# -- filling the cache from the upstream, once ---------------------------------------------


async def started(link: FollowingLink, api: RetainingApi, handler: RecordingHandler) -> RelayBroker:
    relay = RelayBroker("relay+ws://upstream:8000", NAMESPACES, link=link, api=api)
    await relay.start(handler)
    return relay


async def test_the_first_miss_fills_the_cache_once_for_every_reader_waiting(
    handler: RecordingHandler,
) -> None:
    upstream = [publication(offset) for offset in range(7, 11)]  # it retains 7..10
    api = RetainingApi(Position(EPOCH, 10), upstream)
    relay = await started(FollowingLink(Position(EPOCH, 10)), api, handler)
    try:
        await relay.subscribe(CHANNEL)
        # A relay's clients coming back together, each with its own position.
        reads = await asyncio.gather(
            relay.history(CHANNEL),
            *(relay.history(CHANNEL, Position(EPOCH, offset)) for offset in (6, 8, 10)),
        )
        reads_after_filling = api.history_reads
        again = await relay.history(CHANNEL, Position(EPOCH, 9))
    finally:
        await relay.close()

    assert [read.recovery for read in reads] == [
        Replay(tuple(upstream)),
        Replay(tuple(upstream)),
        Replay(tuple(upstream[2:])),
        Replay(()),
    ]
    assert (reads_after_filling, api.history_reads) == (1, 1)
    assert again.recovery == Replay(tuple(upstream[3:]))


async def test_a_channel_followed_from_its_start_never_reads_upstream(
    handler: RecordingHandler,
) -> None:
    api = RetainingApi(Position(EPOCH, 0), [])
    link = FollowingLink(Position(EPOCH, 0))
    relay = await started(link, api, handler)
    try:
        await relay.subscribe(CHANNEL)
        link.listener.receive_publication(publication(1))
        latest_ones = await relay.history(CHANNEL)
        from_start = await relay.history(CHANNEL, Position(EPOCH, 0))
    finally:
        await relay.close()

    assert latest_ones.recovery == from_start.recovery == Replay((publication(1),))
    assert api.history_reads == 0


async def test_a_position_older_than_the_upstream_retains_is_the_upstreams_gap(
    handler: RecordingHandler,
) -> None:
    api = RetainingApi(Position(EPOCH, 10), [publication(offset) for offset in range(7, 11)])
    relay = await started(FollowingLink(Position(EPOCH, 10)), api, handler)
    try:
        await relay.subscribe(CHANNEL)
        read = await relay.history(CHANNEL, Position(EPOCH, 3))
    finally:
        await relay.close()

    assert isinstance(read.recovery, Gap)
