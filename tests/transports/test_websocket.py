"""The WebSocket session (transports/websocket.py) in-process, on a real hub and memory
broker, with a ``RecordingOutbound`` in place of a socket: how replies are bounded
(PROTOCOL.md §2.5), the ``connect`` deadline and the allowance of unauthenticated
sockets (issue #11)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from tests.support.recording import RecordingOutbound
from tidings.brokers.memory import MemoryBroker
from tidings.core.namespace import Namespaces
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.server.auth import Authenticator
from tidings.transports.context import Limits, TransportContext
from tidings.transports.outbound import DIRECT_OUTBOUND
from tidings.transports.websocket import WebSocketSession

BOUND_BYTES = 4096
WAIT_S = 10.0


@dataclass
class FakeClient:
    """The ASGI side of one connection: frames the test queues, events the app sends."""

    inbox: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    sent: list[dict[str, Any]] = field(default_factory=list)
    taken: int = 0  # client frames the session has read

    async def receive(self) -> dict[str, Any]:
        message = await self.inbox.get()
        if message["type"] == "websocket.receive":
            self.taken += 1
        return message

    async def send(self, message: Any) -> None:
        self.sent.append(dict(message))

    def command(self, frame: dict[str, object]) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(frame)})

    def leave(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})


async def until(outbound: RecordingOutbound, condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds, looking again whenever the session writes or holds."""
    async with asyncio.timeout(WAIT_S):
        while not condition():
            outbound.changed.clear()
            await outbound.changed.wait()


def replies(outbound: RecordingOutbound) -> list[dict[str, Any]]:
    return [json.loads(chunk) for chunk in outbound.chunks]


@pytest.fixture
async def context() -> TransportContext:
    hub = Hub(MemoryBroker(Namespaces()))
    await hub.start()
    return TransportContext(
        hub=hub,
        sessions=SessionRegistry(100),
        authenticator=Authenticator(None),
        namespaces=Namespaces(),
        limits=Limits(outbound_buffer_bytes=BOUND_BYTES, command_rate=1e9, command_burst=1e9),
        ping_interval_s=25.0,
    )


@asynccontextmanager
async def session_of(
    context: TransportContext, query: bytes = b""
) -> AsyncIterator[tuple[FakeClient, RecordingOutbound, asyncio.Task[None]]]:
    """Run one session on a fake client and outbound; the client leaves on exit."""
    client = FakeClient()
    outbound = RecordingOutbound()
    scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [],
        "query_string": query,
        "extensions": {DIRECT_OUTBOUND: lambda: outbound},
    }
    client.inbox.put_nowait({"type": "websocket.connect"})
    task = asyncio.create_task(
        WebSocketSession(context, scope, client.send).run(scope, client.receive)
    )
    try:
        yield client, outbound, task
    finally:
        client.leave()
        outbound.take_all()
        async with asyncio.timeout(WAIT_S):
            await task


async def test_unread_replies_past_the_bound_hold_the_next_command_and_lose_none(
    context: TransportContext,
) -> None:
    count = 200  # each reply to an unknown op is ~250 bytes: far past 4 KiB
    async with session_of(context) as (client, outbound, _):
        for n in range(count):
            client.command({"id": n, "op": "nope"})
        async with asyncio.timeout(WAIT_S):
            await outbound.held.wait()
        held_at = client.taken
        assert held_at < count, "the session read every command before holding"
        assert outbound.pending_bytes <= BOUND_BYTES + 1024  # one reply past the bound
        assert [reply["id"] for reply in replies(outbound)] == list(range(held_at))
        while client.taken < count:  # the client reads: commands flow again
            outbound.take_all()
            await until(outbound, lambda: outbound.held.is_set() or client.taken == count)
        client.command({"id": count, "op": "ping"})
        await until(outbound, lambda: len(outbound.chunks) == count + 1)
    answered = replies(outbound)
    assert [reply["id"] for reply in answered] == list(range(count + 1))
    assert all(reply["error"]["code"] == "bad_request" for reply in answered[:count])
    assert answered[count] == {"id": count, "result": {}}


async def test_a_socket_without_a_token_that_sends_no_connect_is_told_why_and_closed_4001(
    context: TransportContext,
) -> None:
    context.authenticator = Authenticator("a-secret-long-enough-for-hs256-signatures!")
    context.limits = replace(context.limits, connect_timeout_s=0.01)
    async with session_of(context) as (_, outbound, _):
        await until(outbound, lambda: outbound.finished is not None)
        assert len(context.sessions) == 1
    assert outbound.finished == (4001, "no connect command with a token within 0.01 s")
    assert replies(outbound) == [
        {
            "push": "disconnect",
            "code": 4001,
            "reason": "no connect command with a token within 0.01 s",
            "reconnect": False,
        }
    ]
    assert len(context.sessions) == 0
