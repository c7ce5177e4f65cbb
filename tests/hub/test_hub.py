"""The hub: subscribe with recovery, the history/live race, fan-out and broker links."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.recording import RecordingBroker, RecordingPresence, RecordingSubscriber
from tidings.brokers.base import PresenceChange
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName
from tidings.core.channel_heat import EXACT_PER_WINDOW, SAMPLED_BELOW, ChannelHeat
from tidings.core.namespace import Namespaces
from tidings.core.publication import Position, Publication
from tidings.core.wire import EncodedPublication
from tidings.errors import BrokerError, Unavailable
from tidings.hub.hub import Hub

ROOM = ChannelName("room:1")


@pytest.fixture
async def broker() -> RecordingBroker:
    return RecordingBroker(MemoryBroker(Namespaces(), epoch_factory=lambda: "E1"))


@pytest.fixture
def presence() -> RecordingPresence:
    return RecordingPresence()


@pytest.fixture
async def hub(broker: RecordingBroker, presence: RecordingPresence) -> Hub:
    hub = Hub(broker, presence)
    await hub.start()
    return hub


async def publish_many(hub: Hub, count: int, channel: ChannelName = ROOM) -> None:
    for index in range(count):
        await hub.publish(channel, b'{"n":%d}' % index)


async def test_fan_out_hands_every_subscriber_the_same_encoded_publication(hub: Hub) -> None:
    subscribers = [RecordingSubscriber(f"c{index}") for index in range(3)]
    for subscriber in subscribers:
        await hub.subscribe(ROOM, subscriber)
    await hub.publish(ROOM, b'"hello"')
    first = subscribers[0].delivered[0]
    assert all(s.delivered == [first] for s in subscribers)
    assert all(s.delivered[0] is first for s in subscribers)
    assert first.websocket is first.websocket  # encoded once, then shared


class OrderedSubscriber(RecordingSubscriber):
    """Notes, in a list shared by several, when it was delivered to."""

    def __init__(self, client_id: str, order: list[str], *, relay: bool = False) -> None:
        super().__init__(client_id)
        self._order = order
        self.is_relay = relay

    def deliver(self, publication: EncodedPublication) -> None:
        self._order.append(self.client_id)
        super().deliver(publication)


async def test_relays_links_are_delivered_to_before_other_subscribers(hub: Hub) -> None:
    # A relay's own subscribers wait for it: it comes first, whenever it subscribed.
    order: list[str] = []
    clients = [OrderedSubscriber(f"c{index}", order) for index in range(3)]
    relays = [OrderedSubscriber(f"relay{index}", order, relay=True) for index in range(2)]
    for subscriber in (clients[0], relays[0], clients[1], clients[2], relays[1]):
        await hub.subscribe(ROOM, subscriber)
    await hub.publish(ROOM, b'"hello"')
    assert sorted(order[:2]) == ["relay0", "relay1"]
    assert sorted(order[2:]) == ["c0", "c1", "c2"]
    await hub.unsubscribe(ROOM, relays[0])
    order.clear()
    await hub.publish(ROOM, b'"again"')
    assert order[0] == "relay1"
    assert sorted(order) == ["c0", "c1", "c2", "relay1"]


async def test_subscribe_without_since_starts_at_the_head_and_is_not_recovered(hub: Hub) -> None:
    await publish_many(hub, 3)
    result = await hub.subscribe(ROOM, RecordingSubscriber("c"))
    assert result is not None
    assert result.position == Position("E1", 3)
    assert result.recovered is False
    assert result.publications == ()


async def test_subscribe_with_since_replays_exactly_the_missed_publications(hub: Hub) -> None:
    await publish_many(hub, 5)
    result = await hub.subscribe(ROOM, RecordingSubscriber("c"), Position("E1", 2))
    assert result is not None
    assert result.recovered is True
    assert [p.offset for p in result.publications] == [3, 4, 5]
    assert result.position == Position("E1", 5)


async def test_subscribe_from_another_epoch_reports_not_recovered(hub: Hub) -> None:
    await publish_many(hub, 2)
    result = await hub.subscribe(ROOM, RecordingSubscriber("c"), Position("OLD", 2))
    assert result is not None
    assert result.recovered is False
    assert result.publications == ()
    assert result.position == Position("E1", 2)


async def test_publications_during_the_history_read_are_merged_once_in_order(
    hub: Hub, broker: RecordingBroker
) -> None:
    await publish_many(hub, 2)
    broker.history_gate = asyncio.Event()
    subscriber = RecordingSubscriber("late")
    subscribing = asyncio.create_task(hub.subscribe(ROOM, subscriber, Position("E1", 0)))
    await broker.history_entered.wait()
    await publish_many(hub, 3)  # offsets 3..5 arrive live while the read is held
    broker.history_gate.set()
    result = await subscribing
    assert result is not None
    # The read (made after the live publications) holds 1..5; the queued 3..5 are not
    # repeated, and nothing was delivered before the result.
    assert [p.offset for p in result.publications] == [1, 2, 3, 4, 5]
    assert subscriber.delivered == []
    await publish_many(hub, 1)
    assert subscriber.offsets == [6]


async def test_live_publications_newer_than_the_read_are_appended_to_the_result(
    hub: Hub, broker: RecordingBroker
) -> None:
    # A broker whose history read returns before later publications: the queued ones
    # past the read must be appended, not lost.
    await publish_many(hub, 2)
    subscriber = RecordingSubscriber("c")
    original_history = broker.inner.history
    gate = asyncio.Event()

    async def stale_history(
        channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> object:
        read = await original_history(channel, since, limit)
        broker.history_entered.set()
        await gate.wait()
        return read

    broker.inner.history = stale_history  # type: ignore[assignment, method-assign]  # a read that returns an old snapshot
    subscribing = asyncio.create_task(hub.subscribe(ROOM, subscriber, Position("E1", 1)))
    await broker.history_entered.wait()
    await publish_many(hub, 2)  # offsets 3, 4: not in the snapshot
    gate.set()
    result = await subscribing
    assert result is not None
    assert result.recovered is True
    assert [p.offset for p in result.publications] == [2, 3, 4]
    assert result.position == Position("E1", 4)


async def test_a_failing_subscriber_does_not_stop_delivery_to_the_others(hub: Hub) -> None:
    good_before = RecordingSubscriber("a")
    bad = RecordingSubscriber("b", failing=True)
    good_after = RecordingSubscriber("c")
    for subscriber in (good_before, bad, good_after):
        await hub.subscribe(ROOM, subscriber)
    await publish_many(hub, 2)
    assert good_before.offsets == [1, 2]
    assert good_after.offsets == [1, 2]
    assert hub.delivery_failures == 2


async def test_a_redelivered_offset_is_not_written_twice(hub: Hub, broker: RecordingBroker) -> None:
    subscriber = RecordingSubscriber("c")
    await hub.subscribe(ROOM, subscriber)
    await publish_many(hub, 2)
    read = await broker.inner.history(ROOM, Position("E1", 0))
    assert broker.handler is not None
    for publication in read.recovery.publications:  # type: ignore[union-attr]  # a Replay here
        broker.handler(publication)  # the broker delivers 1 and 2 again
    assert subscriber.offsets == [1, 2]


async def test_the_node_subscribes_the_broker_once_for_many_concurrent_subscribers(
    hub: Hub, broker: RecordingBroker
) -> None:
    subscribers = [RecordingSubscriber(f"c{index}") for index in range(50)]
    await asyncio.gather(*(hub.subscribe(ROOM, s) for s in subscribers))
    assert broker.subscribes == [ROOM]
    for subscriber in subscribers[:-1]:
        await hub.unsubscribe(ROOM, subscriber)
    assert broker.unsubscribes == []
    await hub.unsubscribe(ROOM, subscribers[-1])
    assert broker.unsubscribes == [ROOM]
    assert hub.channels() == {}


async def test_unsubscribed_subscriber_receives_nothing_more(hub: Hub) -> None:
    stays = RecordingSubscriber("stays")
    leaves = RecordingSubscriber("leaves")
    await hub.subscribe(ROOM, stays)
    await hub.subscribe(ROOM, leaves)
    await publish_many(hub, 1)
    assert await hub.unsubscribe(ROOM, leaves) is True
    await publish_many(hub, 1)
    assert stays.offsets == [1, 2]
    assert leaves.offsets == [1]
    assert await hub.unsubscribe(ROOM, leaves) is False


async def test_a_failed_broker_subscribe_leaves_nothing_subscribed(
    hub: Hub, broker: RecordingBroker
) -> None:
    broker.fail_subscribe = True
    with pytest.raises(ConnectionError):
        await hub.subscribe(ROOM, RecordingSubscriber("c"))
    assert hub.channels() == {}
    broker.fail_subscribe = False
    assert await hub.subscribe(ROOM, RecordingSubscriber("d")) is not None
    assert broker.subscribes == [ROOM]


async def test_subscribing_twice_to_one_channel_is_refused(hub: Hub) -> None:
    subscriber = RecordingSubscriber("c")
    assert await hub.subscribe(ROOM, subscriber) is not None
    assert await hub.subscribe(ROOM, subscriber) is None
    assert hub.channels() == {ROOM: 1}


async def test_presence_lists_subscribers_and_announces_joins_and_leaves_to_others(
    hub: Hub,
) -> None:
    alice = RecordingSubscriber("c1", "alice")
    bob = RecordingSubscriber("c2", "bob")
    await hub.subscribe(ROOM, alice, presence=True)
    await hub.subscribe(ROOM, bob, presence=True)
    assert await hub.presence(ROOM) == {"c1": "alice", "c2": "bob"}
    await hub.unsubscribe(ROOM, bob, presence=True)
    assert [(e.kind, e.user) for e in alice.presence] == [("join", "bob"), ("leave", "bob")]
    assert bob.presence == []  # nobody announces a client to itself
    assert await hub.presence(ROOM) == {"c1": "alice"}


async def test_subscribing_without_presence_lists_nobody_and_announces_nothing(hub: Hub) -> None:
    alice = RecordingSubscriber("c1", "alice")
    await hub.subscribe(ROOM, alice, presence=True)
    await hub.subscribe(ROOM, RecordingSubscriber("c2", "bob"))
    assert await hub.presence(ROOM) == {"c1": "alice"}
    assert alice.presence == []


async def test_presence_changes_of_other_nodes_are_announced_to_local_subscribers(
    hub: Hub, presence: RecordingPresence
) -> None:
    alice = RecordingSubscriber("c1", "alice")
    await hub.subscribe(ROOM, alice, presence=True)
    presence.tell_presence(PresenceChange("join", ROOM, "n2.7", "carol"))
    presence.tell_presence(PresenceChange("leave", ROOM, "n2.7", "carol"))
    presence.tell_presence(PresenceChange("join", ChannelName("room:2"), "n2.8", "dave"))
    assert [(e.kind, e.channel, e.client, e.user) for e in alice.presence] == [
        ("join", ROOM, "n2.7", "carol"),
        ("leave", ROOM, "n2.7", "carol"),
    ]


async def test_a_failed_presence_join_leaves_nothing_subscribed_or_listed(
    hub: Hub, presence: RecordingPresence
) -> None:
    alice = RecordingSubscriber("c1", "alice")
    await hub.subscribe(ROOM, alice, presence=True)
    presence.fail_changes = True
    with pytest.raises(Unavailable):
        await hub.subscribe(ROOM, RecordingSubscriber("c2", "bob"), presence=True)
    assert hub.channels() == {ROOM: 1}
    assert alice.presence == []  # a client that never joined is never announced
    assert await hub.presence(ROOM) == {"c1": "alice"}


async def test_an_unsubscribe_completes_when_the_broker_fails_to_record_the_leave(
    hub: Hub, presence: RecordingPresence
) -> None:
    alice = RecordingSubscriber("c1", "alice")
    bob = RecordingSubscriber("c2", "bob")
    await hub.subscribe(ROOM, alice, presence=True)
    await hub.subscribe(ROOM, bob, presence=True)
    presence.fail_changes = True
    assert await hub.unsubscribe(ROOM, bob, presence=True) is True
    assert [(e.kind, e.user) for e in alice.presence] == [("join", "bob"), ("leave", "bob")]
    assert hub.channels() == {ROOM: 1}


async def test_presence_reaches_clients_as_unavailable_when_the_broker_fails(
    hub: Hub, presence: RecordingPresence
) -> None:
    presence.broken = BrokerError("connection refused")
    with pytest.raises(Unavailable):
        await hub.presence(ROOM)


async def test_a_broker_failure_reaches_clients_as_unavailable_and_leaves_nothing_subscribed(
    hub: Hub, broker: RecordingBroker
) -> None:
    broker.broken = BrokerError("connection refused")
    with pytest.raises(Unavailable):
        await hub.publish(ROOM, b"1")
    with pytest.raises(Unavailable):
        await hub.history(ROOM)
    with pytest.raises(Unavailable):
        await hub.subscribe(ROOM, RecordingSubscriber("c"))
    assert hub.channels() == {}


async def test_a_live_publication_past_a_hole_is_reported_as_a_gap_not_delivered(
    hub: Hub, broker: RecordingBroker
) -> None:
    subscriber = RecordingSubscriber("c")
    await hub.subscribe(ROOM, subscriber)
    await publish_many(hub, 1)
    assert broker.handler is not None
    skipped = Publication(ROOM, "E1", 3, b"3", 0)  # offset 2 never arrived
    broker.handler(skipped)
    new_epoch = Publication(ROOM, "E2", 4, b"4", 0)
    broker.handler(new_epoch)
    assert subscriber.offsets == [1]
    assert subscriber.gaps == [ROOM, ROOM]


async def test_one_fan_out_judges_each_subscription_by_its_own_position(
    hub: Hub, broker: RecordingBroker
) -> None:
    """a and b move together; c joins later, behind them: one publication is a repeat to
    some, the next one to another, or a hole (core.catchup, decided per position)."""
    a, b, c = (RecordingSubscriber(name) for name in ("a", "b", "c"))
    await hub.subscribe(ROOM, a)
    await hub.subscribe(ROOM, b)
    await publish_many(hub, 1)
    assert broker.handler is not None
    broker.handler(Publication(ROOM, "E1", 3, b"3", 0))  # a hole for a and b: gaps
    await hub.subscribe(ROOM, c)  # at the broker's head, E1:1
    broker.handler(Publication(ROOM, "E1", 2, b"2", 0))  # had by a and b; next for c
    broker.handler(Publication(ROOM, "E1", 4, b"4", 0))  # next for a and b; a hole for c
    assert (a.offsets, b.offsets, c.offsets) == ([1, 4], [1, 4], [2])
    assert (a.gaps, b.gaps, c.gaps) == ([ROOM], [ROOM], [ROOM])


async def test_local_subscribers_lists_a_channels_subscribers_on_this_node_in_order(
    hub: Hub,
) -> None:
    first, second, elsewhere = (RecordingSubscriber(name) for name in ("a", "b", "c"))
    await hub.subscribe(ROOM, first)
    await hub.subscribe(ROOM, second)
    await hub.subscribe(ChannelName("room:2"), elsewhere)
    both = hub.local_subscribers(ROOM)
    await hub.unsubscribe(ROOM, first)
    assert both == (first, second)
    assert hub.local_subscribers(ROOM) == (second,)
    assert hub.local_subscribers(ChannelName("room:none")) == ()
    # The counts of /api/channels come from the same subscriptions.
    assert hub.channels() == {ROOM: 1, ChannelName("room:2"): 1}


async def test_a_hub_keeps_presence_in_its_brokers_own_store_unless_given_one() -> None:
    memory = MemoryBroker(Namespaces())
    hub = Hub(memory)
    await hub.start()
    await hub.subscribe(ROOM, RecordingSubscriber("c1", "alice"), presence=True)
    assert hub.presence_store is memory.presence_store
    assert await memory.presence_store.presence(ROOM) == {"c1": "alice"}
    await hub.close()


async def test_fan_out_counts_hot_channels_as_channel_heat_record_does_purges_included() -> None:
    # The hub inlines ChannelHeat.record: fed the same publications, both must agree,
    # through the purges a small summary makes (capacity 1, at most 3 channels). (A
    # channel without local subscribers reaches no fan-out: the node is not subscribed.)
    heat = ChannelHeat(capacity=1, limit=3)
    reference = ChannelHeat(capacity=1, limit=3)
    hub = Hub(MemoryBroker(Namespaces(), epoch_factory=lambda: "E1"), heat=heat)
    await hub.start()
    try:
        subscribers = {ChannelName(f"room:{n}"): n for n in range(1, 5)}
        for channel, count in subscribers.items():
            for s in range(count):
                await hub.subscribe(channel, RecordingSubscriber(f"{channel}.{s}"))
        for channel in [*subscribers, ChannelName("room:3"), ChannelName("room:4"), *subscribers]:
            await hub.publish(channel, b"{}")
            reference.record(channel, subscribers[channel])
    finally:
        await hub.close()
    assert heat.exact.hits_offset > 0  # it purged
    assert heat.close_window(1.0) == reference.close_window(1.0)
    assert heat.top(10) == reference.top(10)
    assert {rate.channel for rate in heat.top(10)} >= {ChannelName("room:4")}


async def test_fan_out_samples_light_publications_as_channel_heat_record_does() -> None:
    # With sampling, the inlined countdown and ChannelHeat.record must draw the same
    # samples from the same seed: past the window's exact publications, one-subscriber
    # channels are sampled while a channel of SAMPLED_BELOW subscribers is counted.
    heat = ChannelHeat(capacity=8, limit=32, sample_every=4, seed=7)
    reference = ChannelHeat(capacity=8, limit=32, sample_every=4, seed=7)
    hub = Hub(MemoryBroker(Namespaces(), epoch_factory=lambda: "E1"), heat=heat)
    crowd = ChannelName("room:crowd")
    singles = [ChannelName(f"user:{n}") for n in range(5)]
    await hub.start()
    try:
        for s in range(SAMPLED_BELOW):
            await hub.subscribe(crowd, RecordingSubscriber(f"crowd.{s}"))
        for channel in singles:
            await hub.subscribe(channel, RecordingSubscriber(f"{channel}.0"))
        stream = [singles[n % len(singles)] for n in range(EXACT_PER_WINDOW + 400)]
        stream[EXACT_PER_WINDOW + 10 :: 50] = [crowd] * len(stream[EXACT_PER_WINDOW + 10 :: 50])
        for channel in stream:
            await hub.publish(channel, b"{}")
            reference.record(channel, SAMPLED_BELOW if channel == crowd else 1)
    finally:
        await hub.close()
    assert heat.sampled.counts  # some were sampled
    assert heat.close_window(1.0) == reference.close_window(1.0)
    assert heat.top(10) == reference.top(10)
    crowd_rate = next(rate for rate in heat.top(10) if rate.channel == crowd)
    crowd_publications = stream.count(crowd)
    assert (crowd_rate.publications_per_s, crowd_rate.publications_error_per_s) == (
        crowd_publications,
        0.0,
    )


async def test_a_new_epoch_of_the_memory_broker_is_a_gap_to_subscribers_and_resumers() -> None:
    # A ring node that lost its lease starts its channels anew (server.ring_fence):
    # nobody may take what it sequences next for what follows its old positions.
    epochs = iter(["E1", "E2"])
    hub = Hub(MemoryBroker(Namespaces(), epoch_factory=lambda: next(epochs)))
    await hub.start()
    subscriber = RecordingSubscriber("c")
    await hub.subscribe(ROOM, subscriber)
    await publish_many(hub, 2)
    assert isinstance(hub.broker, MemoryBroker)
    await hub.broker.start_new_epoch()
    await hub.publish(ROOM, b'"after"')
    assert subscriber.offsets == [1, 2]
    assert subscriber.gaps == [ROOM]  # told, not handed (E2, 1) as if it followed (E1, 2)
    resumed = await hub.subscribe(ROOM, RecordingSubscriber("d"), Position("E1", 2))
    assert resumed is not None
    assert (resumed.position, resumed.recovered) == (Position("E2", 1), False)


async def test_a_fence_refuses_a_publication_before_the_broker_sees_it(
    broker: RecordingBroker,
) -> None:
    def fence(channel: ChannelName) -> None:
        raise Unavailable(f"not sequencing {channel}")

    hub = Hub(broker, fence=fence)
    await hub.start()
    with pytest.raises(Unavailable, match="not sequencing room:1"):
        await hub.publish(ROOM, b'"x"')
    assert (await hub.history(ROOM)).head == Position("E1", 0)


async def test_channels_restarted_in_the_memory_broker_take_a_new_epoch_of_their_own() -> None:
    # A key that comes back to a ring node (server.ring_gains): its channels restart.
    epochs = iter(["E1", "E2", "E3"])
    hub = Hub(MemoryBroker(Namespaces(), epoch_factory=lambda: next(epochs)))
    await hub.start()
    other = ChannelName("room:2")
    await publish_many(hub, 2)
    await publish_many(hub, 2, other)
    assert isinstance(hub.broker, MemoryBroker)
    assert await hub.broker.restart_channels(lambda channel: channel == ROOM) == 1
    resumed = await hub.subscribe(ROOM, RecordingSubscriber("c"), Position("E1", 2))
    assert resumed is not None
    assert (resumed.position, resumed.recovered) == (Position("E2", 0), False)
    kept = await hub.subscribe(other, RecordingSubscriber("d"), Position("E1", 1))
    assert kept is not None
    assert (kept.position, kept.recovered) == (Position("E1", 2), True)
    assert (await hub.publish(ROOM, b'"x"')).position == Position("E2", 1)
