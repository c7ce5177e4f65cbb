"""Two nodes over a real socket for hand-over tests: ``a`` gives, ``c`` receives,
each with the real pump (server/handover.py) and receiver (server/handover_receiver.py)
over a store of its own (memory or sqlite), ``c`` serving ``POST /node/handover`` with
uvicorn. ``c_joining`` walks the ring from ``a`` alone, through ``c`` joining, to final;
``ReceivedMessages`` records what ``c`` was sent, call by call."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import msgspec
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
from tidings.core.publication import ClientInfo
from tidings.core.ring import HashRing
from tidings.core.routing import Destinations, FollowingPlacement
from tidings.hub.sessions import SessionRegistry
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
    """The hand-over messages a receiver was sent, in order, call by call."""

    def __init__(self) -> None:
        self.calls: list[list[HandoverMessage]] = []
        self._changed = asyncio.Condition()

    @property
    def messages(self) -> list[HandoverMessage]:
        """Every message, in the order the calls came."""
        return [message for call in self.calls for message in call]

    async def add(self, body: HandoverMessage | list[HandoverMessage]) -> None:
        """Record one call's body: a message, or a batch of them."""
        async with self._changed:
            self.calls.append(body if isinstance(body, list) else [body])
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
    call's messages to ``received`` (if given) as they come, before they are applied."""

    async def receive(request: Request) -> Response:
        if received is not None:
            # Read once: starlette hands the same body to the handler's read.
            body = await request.body()
            await received.add(
                msgspec.json.decode(body, type=HandoverMessage | list[HandoverMessage])
            )
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
    return channels_moving_from_a_to_c(namespace, 1)[0]


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


def channels_moving_from_a_to_c(namespace: str, count: int) -> list[ChannelName]:
    """``count`` channels of ``namespace`` that a ring of a alone gives a and a ring of
    a and c, c."""
    ring = HashRing(["a", "c"])
    names = (ChannelName(f"{namespace}:{n}") for n in range(100 * count))
    moving = [name for name in names if ring.owner(name) == "c"][:count]
    assert len(moving) == count
    return moving
