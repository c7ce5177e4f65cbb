"""The receiver's side of a hand-over (server/handover.py ``apply_to_replica``) on a real
memory store: whatever order the giver's snapshots and streams arrive in, late or
repeated, and then the pump's catch-up from what the replica answered, the replica ends
holding the giver's history at the giver's positions, its keys, and it delivered each
publication live at most once and never backwards."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.clock import FakeClock
from tests.support.handler import RecordingHandler
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Replay
from tidings.server.handover import apply_to_replica

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


async def snapshot_of(giver: MemoryBroker) -> Message:
    read = await giver.history(DOC)
    assert isinstance(read.recovery, Replay)
    return Message(read.head.epoch, read.head.offset, read.recovery.publications, snapshot=True)


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
    # A publisher retrying the last key at the new owner is answered with its position.
    if n:
        retried = await receiver.publish(DOC, b"{}", key=f"k{n}")
        assert retried.duplicate
        assert retried.position == Position("giverEpoch", n)
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
