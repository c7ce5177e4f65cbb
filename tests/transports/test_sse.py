"""An SSE stream's opening replay (transports/sse.py) in-process, on a real hub and memory
broker, with a ``RecordingOutbound`` in place of a socket: the replay is written in
pieces within the outbound bound, and what arrives meanwhile is held within it too
(issue #11.5)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.recording import RecordingOutbound
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.publication import Position
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.server.auth import Authenticator
from tidings.transports.context import Limits, TransportContext
from tidings.transports.outbound import DIRECT_OUTBOUND
from tidings.transports.sse import SseSession

BOUND_BYTES = 4096
WAIT_S = 10.0
CHANNELS = [ChannelName("room:a"), ChannelName("room:b")]
HISTORY = 50
DATA = json.dumps({"blob": "x" * 500}).encode()


@pytest.fixture
async def context() -> TransportContext:
    hub = Hub(MemoryBroker(Namespaces(), epoch_factory=lambda: "E1"))
    await hub.start()
    for _ in range(HISTORY):
        for channel in CHANNELS:
            await hub.publish(channel, DATA)
    return TransportContext(
        hub=hub,
        sessions=SessionRegistry(100),
        authenticator=Authenticator(None),
        namespaces=Namespaces(),
        limits=Limits(outbound_buffer_bytes=BOUND_BYTES),
        ping_interval_s=25.0,
    )


def opened(context: TransportContext) -> tuple[SseSession, RecordingOutbound]:
    outbound = RecordingOutbound()
    scope = {"type": "http", "extensions": {DIRECT_OUTBOUND: lambda: outbound}}

    async def send(message: Any) -> None:
        raise AssertionError("a direct outbound writes the stream itself")

    return SseSession(context, scope, send), outbound


def events(outbound: RecordingOutbound) -> list[tuple[str, dict[str, Any]]]:
    """Each event's type and data."""
    found = []
    for chunk in outbound.chunks:
        fields = dict(line.split(": ", 1) for line in chunk.strip().split("\n"))
        found.append((fields["event"], json.loads(fields["data"])))
    return found


async def test_the_replay_waits_for_the_client_past_the_bound_and_completes_once_read(
    context: TransportContext,
) -> None:
    session, outbound = opened(context)
    since = {channel: Position("E1", 0) for channel in CHANNELS}
    opening = asyncio.create_task(session.open(CHANNELS, since))
    async with asyncio.timeout(WAIT_S):
        await outbound.held.wait()
    assert not opening.done()
    assert outbound.pending_bytes <= BOUND_BYTES + 2048  # one event past the bound
    await context.hub.publish(CHANNELS[0], b'{"live":true}')  # arrives mid-replay
    while not opening.done():  # the client reads
        outbound.take_all()
        held = asyncio.create_task(outbound.held.wait())
        async with asyncio.timeout(WAIT_S):
            await asyncio.wait([opening, held], return_when=asyncio.FIRST_COMPLETED)
        held.cancel()
    await opening
    written = events(outbound)
    assert written[0][0] == "subscribed"
    pubs = [data for kind, data in written[1:] if kind == "pub"]
    assert len(pubs) == len(written) - 1 == 2 * HISTORY + 1
    for channel in CHANNELS:
        offsets = [pub["offset"] for pub in pubs[:-1] if pub["channel"] == channel]
        assert offsets == list(range(1, HISTORY + 1))
    assert (pubs[-1]["channel"], pubs[-1]["offset"], pubs[-1]["data"]) == (
        CHANNELS[0],
        HISTORY + 1,
        {"live": True},
    )
    await session._leave_all()


async def test_publications_held_past_the_bound_during_the_replay_cut_the_stream(
    context: TransportContext,
) -> None:
    session, outbound = opened(context)
    since = {channel: Position("E1", 0) for channel in CHANNELS}
    opening = asyncio.create_task(session.open(CHANNELS, since))
    async with asyncio.timeout(WAIT_S):
        await outbound.held.wait()
    while outbound.finished is None:
        await context.hub.publish(CHANNELS[1], DATA)
    async with asyncio.timeout(WAIT_S):
        await opening
    assert outbound.finished == (4500, "slow consumer")
    kind, data = events(outbound)[-1]
    assert (kind, data) == (
        "disconnect",
        {"code": 4500, "reason": "slow consumer", "reconnect": True},
    )
    await session._leave_all()
