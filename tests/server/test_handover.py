"""The receiver's side of a hand-over (server/handover_receiver.py ``apply_to_replica``) on a real
memory store: whatever order the giver's snapshots and streams arrive in, late or
repeated, and then the pump's catch-up from what the replica answered, the replica ends
holding the giver's history at the giver's positions, its keys (those of evicted
publications too), and it delivered each
publication live at most once and never backwards."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clock import FakeClock
from tests.support.handler import RecordingHandler
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.dedupe import RememberedKey
from tidings.core.handover import RingRecord
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, Replay
from tidings.core.ring import HashRing
from tidings.core.routing import Destinations, FollowingPlacement
from tidings.errors import Unavailable
from tidings.hub.sessions import SessionRegistry
from tidings.server import handover_broker
from tidings.server.forwarding import OwnerLink
from tidings.server.handover import Handover
from tidings.server.handover_broker import HandoverBroker
from tidings.server.handover_messages import HandoverMessage, snapshot_keys
from tidings.server.handover_receiver import apply_to_replica
from tidings.server.ring_moves import RingMover

HOUR_MS = 3_600_000
HISTORY_SIZE = 5  # small: snapshots and streams meet evicted history
NAMESPACES = Namespaces(
    {NamespaceName("doc"): NamespaceOptions(history=HistoryOptions(HISTORY_SIZE, HOUR_MS))}
)
DOC = ChannelName("doc:1")


@dataclass(frozen=True)
class Message:
    epoch: str
    top: int
    publications: tuple[Publication, ...]
    snapshot: bool
    keys: tuple[RememberedKey, ...] = ()


async def snapshot_of(giver: MemoryBroker) -> Message:
    read = await giver.history(DOC)
    assert isinstance(read.recovery, Replay)
    publications = read.recovery.publications
    # The keys of publications evicted from history travel beside it, as the pump sends.
    keys = snapshot_keys(await giver.remembered_keys(DOC), publications, read.head)
    return Message(read.head.epoch, read.head.offset, publications, snapshot=True, keys=keys)


async def stream_since(giver: MemoryBroker, since: Position) -> Message | None:
    read = await giver.history(DOC, since)
    if not isinstance(read.recovery, Replay) or not read.recovery.publications:
        return None
    return Message(read.head.epoch, read.head.offset, read.recovery.publications, snapshot=False)


async def deliver(
    receiver: MemoryBroker, held: Position | None, message: Message
) -> Position | None:
    """Apply ``message``; return what the replica holds after (``None``: resync asked,
    so the giver starts again from a snapshot)."""
    return await apply_to_replica(
        receiver,
        held,
        (DOC, message.epoch, message.top),
        list(message.publications),
        snapshot=message.snapshot,
        keys=message.keys,
    )


async def scenario(batches: list[int], order: list[int]) -> None:
    clock = FakeClock()
    giver = MemoryBroker(NAMESPACES, clock=clock, epoch_factory=lambda: "giverEpoch")
    receiver = MemoryBroker(NAMESPACES, clock=clock, epoch_factory=lambda: "receiverEpoch")
    live = RecordingHandler()
    await giver.start(RecordingHandler())
    await receiver.start(live)
    await receiver.subscribe(DOC)
    # The giver publishes in batches; after each, what it could send is captured: a
    # snapshot, and the stream since the previous capture.
    messages: list[Message] = [await snapshot_of(giver)]
    previous = (await giver.history(DOC)).head
    n = 0
    for count in batches:
        for _ in range(count):
            n += 1
            await giver.publish(DOC, b'{"n":%d}' % n, key=f"k{n}")
        messages.append(await snapshot_of(giver))
        stream = await stream_since(giver, previous)
        if stream is not None:
            messages.append(stream)
        previous = (await giver.history(DOC)).head
    # Delivered in any order, some more than once, some never.
    held: Position | None = None
    for index in order:
        answer = await deliver(receiver, held, messages[index % len(messages)])
        held = answer if answer is not None else held
    # Then the pump catches up from what the replica answered.
    pumped: Position | None = held
    top = (await giver.history(DOC)).head
    for _ in range(10):
        if pumped == top:
            break
        message = await snapshot_of(giver) if pumped is None else await stream_since(giver, pumped)
        if message is None:  # nothing newer retained after what it holds: a snapshot
            message = await snapshot_of(giver)
        pumped = await deliver(receiver, pumped, message)
    assert pumped == top
    # The replica holds the giver's head and retained history, at the same positions.
    given_read, replica_read = await giver.history(DOC), await receiver.history(DOC)
    assert replica_read.head == given_read.head
    assert isinstance(given_read.recovery, Replay)
    assert isinstance(replica_read.recovery, Replay)
    assert [(p.offset, p.data, p.key) for p in replica_read.recovery.publications] == [
        (p.offset, p.data, p.key) for p in given_read.recovery.publications
    ]
    # Delivered live at most once each, never backwards, all in the giver's epoch.
    offsets = [p.offset for p in live.items]
    assert offsets == sorted(set(offsets))
    assert {p.epoch for p in live.items} <= {"giverEpoch"}
    # A publisher retrying any key at the new owner is answered with its position, its
    # publication evicted from history or not.
    for published in range(1, n + 1):
        retried = await receiver.publish(DOC, b"{}", key=f"k{published}")
        assert retried.duplicate
        assert retried.position == Position("giverEpoch", published)
    await giver.close()
    await receiver.close()


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    batches=st.lists(st.integers(0, 8), max_size=6),
    order=st.lists(st.integers(0, 30), max_size=20),
)
def test_a_replica_fed_messages_in_any_order_ends_as_the_giver(
    batches: list[int], order: list[int]
) -> None:
    asyncio.run(scenario(batches, order))


# The new owner's epochs when the ring changes (Handover.receive_ring): a channel handed
# over whole continues the giver's epoch; one whose sequencer crashed starts a new one.

URLS = {"a": "http://a.example:8000", "c": "http://c.example:8000"}
SECRET = "a-cluster-secret-of-at-least-32-bytes"
GIVER_EPOCH = "aEpoch"


def owned_in_a_and_c_by(node: str) -> ChannelName:
    """A channel the ring of a and c gives ``node`` (``c``: one that moves from a as c joins)."""
    ring = HashRing(["a", "c"])
    return next(ChannelName(f"doc:{n}") for n in range(1000) if ring.owner(f"doc:{n}") == node)


@contextlib.asynccontextmanager
async def node_c() -> AsyncIterator[tuple[Handover, HandoverBroker]]:
    """Node ``c``'s hand-over over a memory store; no HTTP is made."""
    store = MemoryBroker(NAMESPACES, epoch_factory=lambda: "cEpoch")
    placement = FollowingPlacement("c", URLS["c"], NAMESPACES)
    link = OwnerLink(placement, SECRET)
    broker = HandoverBroker(store, placement, lambda: link, timeout_s=1.0)
    mover = RingMover(SessionRegistry(10), Destinations(placement), NAMESPACES, 10.0)
    handover = Handover("c", placement, broker, lambda: link, mover, timeout_s=1.0)
    await broker.start(RecordingHandler())
    try:
        yield handover, broker
    finally:
        await mover.close()
        await broker.close()


def message_from_a(channel: ChannelName, top: int, *, sealed: bool) -> HandoverMessage:
    publications = [{"offset": n, "ts": n, "data": {"n": n}} for n in range(1, top + 1)]
    body = {
        "giver": "a",
        "channel": channel,
        "epoch": GIVER_EPOCH,
        "top": top,
        "snapshot": True,
        "publications": publications,
        "sealed": sealed,
    }
    return msgspec.json.decode(msgspec.json.encode(body), type=HandoverMessage)


async def test_a_channel_handed_over_whole_continues_the_givers_epoch() -> None:
    channel = owned_in_a_and_c_by("c")
    async with node_c() as (handover, broker):
        handover.receive_ring(RingRecord(2, URLS, {"a": URLS["a"]}))  # c joins
        await handover.sequencing_ready()
        answer = await handover.receiver.apply(channel, message_from_a(channel, 3, sealed=True))
        assert (answer.epoch, answer.offset) == (GIVER_EPOCH, 3)
        handover.receive_ring(RingRecord(3, URLS))  # final: c sequences
        await handover.sequencing_ready()
        result = await broker.publish(channel, b"{}")
    assert result.position == Position(GIVER_EPOCH, 4)


async def test_a_channel_whose_giver_crashed_before_sealing_starts_a_new_epoch() -> None:
    channel = owned_in_a_and_c_by("c")
    async with node_c() as (handover, broker):
        handover.receive_ring(RingRecord(2, URLS, {"a": URLS["a"]}))
        await handover.sequencing_ready()
        await handover.receiver.apply(channel, message_from_a(channel, 3, sealed=False))
        handover.receive_ring(RingRecord(2, URLS, {"a": URLS["a"]}).crashed("a"))
        await handover.sequencing_ready()
        result = await broker.publish(channel, b"{}")
        read = await broker.history(channel, Position(GIVER_EPOCH, 3))
    # Offsets of a's epoch beyond 3 may have been given by a: never again here.
    assert result.position.epoch != GIVER_EPOCH
    assert result.position.offset == 1
    assert isinstance(read.recovery, Gap)


async def test_a_stale_copy_of_a_crashed_owners_channel_is_not_continued() -> None:
    channel = owned_in_a_and_c_by("a")
    async with node_c() as (handover, broker):
        handover.receive_ring(RingRecord(1, URLS))  # settled: a owns the channel
        await handover.sequencing_ready()
        # c holds an old copy of it (handed over to it once, long ago).
        await broker.adopt(channel, GIVER_EPOCH, [], top=7)
        handover.receive_ring(RingRecord(1, URLS).crashed("a"))
        await handover.sequencing_ready()
        result = await broker.publish(channel, b"{}")
    assert result.position.epoch != GIVER_EPOCH


async def test_a_subscriber_ahead_of_the_copy_waits_for_the_stream_then_resumes() -> None:
    # Moved here while the giver goes on sequencing, it holds offset 5 of a's epoch; the
    # copy holds 3 until the stream brings 4 and 5: then it resumes, nothing missed.
    channel = owned_in_a_and_c_by("c")
    async with node_c() as (handover, broker):
        handover.receive_ring(RingRecord(2, URLS, {"a": URLS["a"]}))  # c joins
        await handover.sequencing_ready()
        await handover.receiver.apply(channel, message_from_a(channel, 3, sealed=False))
        resuming = asyncio.create_task(broker.history(channel, Position(GIVER_EPOCH, 5)))
        await asyncio.sleep(0)  # it reads the copy, behind its position, and waits
        assert not resuming.done()
        await handover.receiver.apply(channel, message_from_a(channel, 5, sealed=False))
        read = await resuming
    assert read.head == Position(GIVER_EPOCH, 5)
    assert isinstance(read.recovery, Replay)
    assert read.recovery.publications == ()


async def test_a_subscriber_ahead_of_a_copy_that_does_not_come_is_told_to_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The giver's messages are lost (and resent later): after the wait the subscriber is
    # refused, to retry with its position, never told recovered: false with no crash.
    monkeypatch.setattr(handover_broker, "RESUME_WAIT_S", 0.05)
    channel = owned_in_a_and_c_by("c")
    async with node_c() as (handover, broker):
        handover.receive_ring(RingRecord(2, URLS, {"a": URLS["a"]}))
        await handover.sequencing_ready()
        await handover.receiver.apply(channel, message_from_a(channel, 3, sealed=False))
        with pytest.raises(Unavailable, match="retry shortly"):
            await broker.history(channel, Position(GIVER_EPOCH, 5))
        # Not ahead: answered at once from the copy (whatever it still retains).
        read = await broker.history(channel, Position(GIVER_EPOCH, 2))
    assert read.head == Position(GIVER_EPOCH, 3)
