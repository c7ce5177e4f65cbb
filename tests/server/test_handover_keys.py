"""A channel's idempotency keys move with it in a hand-over (server/handover.py giving,
server/handover_receiver.py receiving), whatever its history retained: node ``a`` hands
a channel to node ``c`` as ``c`` joins, over a real socket (``POST /node/handover``
served by uvicorn), each node over a store of its own (memory or sqlite). Keys published
before the transition and keys published during it, after the snapshot was acknowledged,
in a namespace retaining nothing (``history_size = 0``) or evicting them at once
(``history_size = 1``), the keys in one message or one key a message: once the ring is
final, a publisher retrying any of them at ``c`` is answered ``duplicate`` with the
original position, and a new key is published after them. And a channel retaining
nothing, sent a fresh snapshot for each publication of the transition, sends each key
once, not its whole window each time."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.handler import RecordingHandler
from tidings.brokers.base import RingStore
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.handover import RingRecord
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import ClientInfo, Position
from tidings.core.ring import HashRing
from tidings.core.routing import Destinations, FollowingPlacement
from tidings.hub.sessions import SessionRegistry
from tidings.server import handover_messages
from tidings.server.forwarding import OwnerLink
from tidings.server.handover import Handover
from tidings.server.handover_broker import HandoverBroker
from tidings.server.handover_messages import HandoverMessage
from tidings.server.handover_receiver import HANDOVER_PATH
from tidings.server.ring_moves import RingMover

HOUR_MS = 3_600_000
NAMESPACES = Namespaces(
    {
        NamespaceName("bare"): NamespaceOptions(history=HistoryOptions(0, HOUR_MS)),
        NamespaceName("short"): NamespaceOptions(history=HistoryOptions(1, HOUR_MS)),
    }
)
SECRET = "a-cluster-secret-of-at-least-32-bytes"
# A bound on awaited conditions, never a timed assertion.
CONDITION_TIMEOUT_S = 30.0
ALICE = ClientInfo("c1", "alice")

Kind = Literal["memory", "sqlite"]


class GatedMover(RingMover):
    """The giver's mover, telling the test when every snapshot was acknowledged (the
    hand-over then moves clients) and holding the hand-over there until ``gate`` is set,
    so that publications are made during the transition after the snapshot."""

    def __init__(self, placement: FollowingPlacement) -> None:
        super().__init__(SessionRegistry(10), Destinations(placement), NAMESPACES, 10.0)
        self.snapshots_acked = asyncio.Event()
        self.gate = asyncio.Event()

    def receive_ring(self) -> None:
        self.snapshots_acked.set()
        super().receive_ring()

    async def wait_moved(self) -> None:
        await self.gate.wait()
        await super().wait_moved()


@dataclass
class Node:
    handover: Handover
    broker: HandoverBroker
    mover: RingMover
    link: OwnerLink


def make_store(kind: Kind, directory: Path, node: str) -> RingStore:
    if kind == "memory":
        return MemoryBroker(NAMESPACES, epoch_factory=lambda: f"{node}Epoch")
    return SqliteBroker(
        directory / node, NAMESPACES, epoch_factory=lambda: f"{node}Epoch", durability="fast"
    )


@contextlib.asynccontextmanager
async def node(
    name: str, urls: dict[str, str], store: RingStore, *, gated: bool = False
) -> AsyncIterator[Node]:
    placement = FollowingPlacement(name, urls[name], NAMESPACES)
    link = OwnerLink(placement, SECRET)
    broker = HandoverBroker(store, placement, lambda: link, timeout_s=CONDITION_TIMEOUT_S)
    moves = (
        GatedMover(placement)
        if gated
        else RingMover(SessionRegistry(10), Destinations(placement), NAMESPACES, 10.0)
    )
    handover = Handover(name, placement, broker, lambda: link, moves, timeout_s=CONDITION_TIMEOUT_S)
    await broker.start(RecordingHandler())
    try:
        yield Node(handover, broker, moves, link)
    finally:
        await moves.close()
        await link.aclose()
        await broker.close()


class ReceivedMessages:
    """The hand-over messages a receiver was sent, in order."""

    def __init__(self) -> None:
        self.messages: list[HandoverMessage] = []
        self._changed = asyncio.Condition()

    async def add(self, message: HandoverMessage) -> None:
        async with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    async def wait_top(self, offset: int) -> None:
        """Wait until a message reaching ``offset`` was sent (so the giver read its
        history up to there)."""
        async with self._changed:
            await self._changed.wait_for(lambda: any(m.top >= offset for m in self.messages))


@contextlib.asynccontextmanager
async def serving_handover(
    listener: socket.socket, receiver: list[Handover], received: ReceivedMessages | None = None
) -> AsyncIterator[None]:
    """Serve ``POST /node/handover`` of ``receiver[0]`` on ``listener``; add each
    message to ``received`` (if given) as it comes, before it is applied."""

    async def receive(request: Request) -> Response:
        if received is not None:
            # Read once: starlette hands the same body to the handler's read.
            await received.add(msgspec.json.decode(await request.body(), type=HandoverMessage))
        return await receiver[0].receiver.receive(request)

    app = Starlette(routes=[Route(HANDOVER_PATH, receive, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        yield
    finally:
        server.should_exit = True
        await serving


def moving_from_a_to_c(namespace: str) -> ChannelName:
    """A channel of ``namespace`` that a ring of a alone gives a and a ring of a and c, c."""
    ring = HashRing(["a", "c"])
    return next(
        ChannelName(f"{namespace}:{n}")
        for n in range(1000)
        if ring.owner(f"{namespace}:{n}") == "c"
    )


@dataclass
class Joining:
    """Node ``c`` joins a ring of ``a`` alone; ``a`` hands it the channels that move.
    The steps: ``transition`` (from ``a`` alone to the transition, returning once every
    snapshot is acknowledged: publications then are made during it), ``finish`` (the
    hand-over ends and the ring is final: ``c`` sequences the moved channels)."""

    a: Node
    c: Node
    urls: dict[str, str]
    handing: asyncio.Task[None] | None = None

    async def _receive_ring(self, ring: RingRecord) -> None:
        for each in (self.a, self.c):
            each.handover.receive_ring(ring)
            await each.handover.sequencing_ready()

    async def alone(self) -> None:
        await self._receive_ring(RingRecord(1, {"a": self.urls["a"]}))

    async def transition(self) -> None:
        joining = RingRecord(2, self.urls, {"a": self.urls["a"]})
        await self._receive_ring(joining)
        self.handing = asyncio.create_task(self.a.handover.hand_over(joining))
        assert isinstance(self.a.mover, GatedMover)
        await self.a.mover.snapshots_acked.wait()

    async def finish(self) -> None:
        assert isinstance(self.a.mover, GatedMover)
        assert self.handing is not None
        self.a.mover.gate.set()
        await self.handing  # every receiver holds its channels whole
        await self._receive_ring(RingRecord(3, self.urls))


@contextlib.asynccontextmanager
async def c_joining(
    kind: Kind, tmp_path: Path, received: ReceivedMessages | None = None
) -> AsyncIterator[Joining]:
    """Nodes ``a`` and ``c``, each over a store of ``kind``, ``c`` serving
    ``POST /node/handover`` on a real socket (each message it receives appended to
    ``received``), all bounded by ``CONDITION_TIMEOUT_S``."""
    listener = socket.create_server(("127.0.0.1", 0))
    urls = {"a": "http://127.0.0.1:1", "c": f"http://127.0.0.1:{listener.getsockname()[1]}"}
    receiver: list[Handover] = []
    async with (
        node("a", urls, make_store(kind, tmp_path, "a"), gated=True) as a,
        node("c", urls, make_store(kind, tmp_path, "c")) as c,
        serving_handover(listener, receiver, received),
        asyncio.timeout(CONDITION_TIMEOUT_S),
    ):
        receiver.append(c.handover)
        joining = Joining(a, c, urls)
        await joining.alone()
        yield joining


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("namespace", ["bare", "short"])
@pytest.mark.parametrize("keys_per_message", ["all", "one"])
async def test_a_retry_at_the_new_owner_is_a_duplicate_whatever_the_history_retained(
    kind: Kind,
    namespace: str,
    keys_per_message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if keys_per_message == "one":
        # A long dedupe window goes in several messages: here, one key in each.
        monkeypatch.setattr(handover_messages, "MESSAGE_KEY_BYTES", 1)
    channel = moving_from_a_to_c(namespace)
    async with c_joining(kind, tmp_path) as joining:
        a, c = joining.a, joining.c
        # Before the transition, at a: evicted at once (or never retained).
        before = [
            await a.broker.publish(channel, b'{"n":1}', key="k1"),
            await a.broker.publish(channel, b'{"n":2}', key="k2", info=ALICE),
            await a.broker.publish(channel, b'{"n":3}'),
        ]
        await joining.transition()
        # During the transition, after the snapshot: sequenced at a, copied to c.
        during = [
            await a.broker.publish(channel, b'{"n":4}', key="k4"),
            await a.broker.publish(channel, b'{"n":5}', key="k5", info=ALICE),
        ]
        await joining.finish()
        retries = [
            await c.broker.publish(channel, b"{}", key="k1"),
            await c.broker.publish(channel, b"{}", key="k2", info=ALICE),
            await c.broker.publish(channel, b"{}", key="k4"),
            await c.broker.publish(channel, b"{}", key="k5", info=ALICE),
        ]
        fresh = await c.broker.publish(channel, b"{}", key="k6")
    originals = [before[0], before[1], during[0], during[1]]
    assert [p.position for p in originals] == [Position("aEpoch", n) for n in (1, 2, 4, 5)]
    assert [(r.duplicate, r.position) for r in retries] == [(True, p.position) for p in originals]
    assert (fresh.duplicate, fresh.position) == (False, Position("aEpoch", 6))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_channel_retaining_nothing_sends_its_key_window_once_not_at_each_publication(
    kind: Kind, tmp_path: Path
) -> None:
    # With history_size = 0 each publication of the transition is gone from history
    # before the pump reads it, so the pump sends a fresh snapshot for it: those carry
    # only the keys the receiver has not acknowledged, not the whole window again.
    window, during = 20, 10
    channel = moving_from_a_to_c("bare")
    received = ReceivedMessages()
    async with c_joining(kind, tmp_path, received) as joining:
        for n in range(1, window + 1):
            await joining.a.broker.publish(channel, b"{}", key=f"k{n}")
        await joining.transition()
        first_snapshot = len(received.messages)
        for n in range(window + 1, window + during + 1):
            await joining.a.broker.publish(channel, b"{}", key=f"k{n}")
            await received.wait_top(n)  # one fresh snapshot each, none coalesced
        await joining.finish()
        retries = [await joining.c.broker.publish(channel, b"{}", key=f"k{n}") for n in (1, 30)]
    later = received.messages[first_snapshot:]
    assert sum(m.snapshot for m in later) == during  # the case at stake
    sent = Counter(k.key for message in received.messages for k in message.keys)
    assert sum(sent.values()) == window + during  # not ``during`` times the window
    assert sent == Counter(f"k{n}" for n in range(1, window + during + 1))  # each once
    assert [(r.duplicate, r.position.offset) for r in retries] == [(True, 1), (True, 30)]
