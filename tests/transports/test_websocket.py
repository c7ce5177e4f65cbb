"""The WebSocket session (transports/websocket.py) in-process, on a real hub and memory
broker, with a ``RecordingOutbound`` in place of a socket: how replies are bounded
(docs/protocol.md §2.5), the ``connect`` deadline and the allowance of unauthenticated
sockets (issue #11); the command protocol (connect before subscribe, the rate, the
channel limit, reply shapes) and admission's answers (a forbidden or moved channel, a
draining node), each refusal logged once (issue #10)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import jwt
import pytest

from tests.support.placement import OWNER_URL, ElsewherePlacement
from tests.support.recording import RecordingOutbound
from tests.support.transport import memory_context
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
    return await memory_context(
        Limits(outbound_buffer_bytes=BOUND_BYTES, command_rate=1e9, command_burst=1e9)
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


# -- the command protocol, without sockets (issue #10) -----------------------------------

SECRET = "a-secret-long-enough-for-hs256-signatures!"


def token_of(user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


async def answer(
    client: FakeClient, outbound: RecordingOutbound, frame: dict[str, object]
) -> dict[str, Any]:
    """Send one command and return its reply."""
    client.command(frame)
    await until(outbound, lambda: any(r.get("id") == frame["id"] for r in replies(outbound)))
    return next(r for r in replies(outbound) if r.get("id") == frame["id"])


async def test_connect_and_subscribe_replies_have_the_protocols_shapes(
    context: TransportContext,
) -> None:
    async with session_of(context) as (client, outbound, _):
        connected = await answer(client, outbound, {"id": 1, "op": "connect"})
        subscribed = await answer(client, outbound, {"id": 2, "op": "subscribe", "channel": "a"})
    assert set(connected) == {"id", "result"}
    assert set(connected["result"]) == {"client", "user", "ping", "version"}
    assert connected["result"]["user"] == ""
    assert connected["result"]["ping"] == 25.0
    assert set(subscribed["result"]) == {"epoch", "offset", "recovered", "publications"}
    assert subscribed["result"]["offset"] == 0
    assert subscribed["result"]["publications"] == []


async def test_a_subscribe_before_connect_where_a_token_is_required_is_refused_then_closed(
    context: TransportContext,
) -> None:
    context.authenticator = Authenticator(SECRET)
    async with session_of(context) as (client, outbound, _):
        client.command({"id": 1, "op": "subscribe", "channel": "a"})
        await until(outbound, lambda: outbound.finished is not None)
    assert replies(outbound)[0] == {
        "id": 1,
        "error": {"code": "unauthorized", "message": "send a connect command with a token first"},
    }
    assert outbound.finished == (4001, "send a connect command with a token first")
    assert context.refusals.counts["token"] == 1


async def test_a_connect_with_a_token_lets_the_socket_subscribe(
    context: TransportContext,
) -> None:
    context.authenticator = Authenticator(SECRET)
    async with session_of(context) as (client, outbound, _):
        token = token_of("alice")
        connected = await answer(client, outbound, {"id": 1, "op": "connect", "token": token})
        subscribed = await answer(
            client, outbound, {"id": 2, "op": "subscribe", "channel": "user:alice"}
        )
    assert connected["result"]["user"] == "alice"
    assert "result" in subscribed
    assert outbound.finished is None


async def test_a_connect_after_a_subscribe_is_a_bad_request_and_the_socket_stays(
    context: TransportContext,
) -> None:
    async with session_of(context) as (client, outbound, _):
        await answer(client, outbound, {"id": 1, "op": "subscribe", "channel": "a"})
        late = await answer(client, outbound, {"id": 2, "op": "connect"})
        pong = await answer(client, outbound, {"id": 3, "op": "ping"})
    assert late["error"] == {
        "code": "bad_request",
        "message": "connect must come before any subscribe",
    }
    assert pong == {"id": 3, "result": {}}


async def test_commands_over_the_rate_are_refused_and_logged_once_as_over_the_rate(
    context: TransportContext,
) -> None:
    context.limits = replace(context.limits, command_rate=1e-6, command_burst=2)
    async with session_of(context) as (client, outbound, _):
        for n in range(3):
            client.command({"id": n, "op": "ping"})
        await until(outbound, lambda: len(outbound.chunks) == 3)
    answered = replies(outbound)
    assert answered[:2] == [{"id": 0, "result": {}}, {"id": 1, "result": {}}]
    assert answered[2]["error"]["code"] == "too_many_requests"
    assert "commands per second" in answered[2]["error"]["message"]
    assert context.refusals.counts["rate_limit"] == 1
    assert context.refusals.counts["limit"] == 0


async def test_a_subscribe_past_the_channel_limit_is_too_many_and_logged_once(
    context: TransportContext,
) -> None:
    context.limits = replace(context.limits, max_channels_per_connection=1)
    async with session_of(context) as (client, outbound, _):
        await answer(client, outbound, {"id": 1, "op": "subscribe", "channel": "a"})
        refused = await answer(client, outbound, {"id": 2, "op": "subscribe", "channel": "b"})
        again = await answer(client, outbound, {"id": 3, "op": "subscribe", "channel": "a"})
    assert refused["error"] == {
        "code": "too_many_requests",
        "message": "a connection may hold at most 1 subscriptions",
    }
    assert again["error"] == {"code": "bad_request", "message": "already subscribed to a"}
    assert context.refusals.counts["limit"] == 1


async def test_a_forbidden_subscribe_is_refused_and_logged_once(
    context: TransportContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.transports.refusals")
    async with session_of(context) as (client, outbound, _):
        refused = await answer(
            client, outbound, {"id": 1, "op": "subscribe", "channel": "user:bob"}
        )
    assert refused["error"]["code"] == "permission_denied"
    assert context.refusals.counts["forbidden"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "tidings.transports.refusals"]
    assert len(lines) == 1
    assert lines[0].startswith("refused a channel from unknown")


async def test_a_subscribe_to_a_channel_owned_elsewhere_is_moved_with_the_owners_ws_url(
    context: TransportContext,
) -> None:
    context.placement = ElsewherePlacement("doc:9")
    async with session_of(context) as (client, outbound, _):
        moved = await answer(client, outbound, {"id": 1, "op": "subscribe", "channel": "doc:9"})
        here = await answer(client, outbound, {"id": 2, "op": "subscribe", "channel": "doc:1"})
    assert moved == {
        "id": 1,
        "error": {
            "code": "moved",
            "message": f"channel doc:9 is served by another node: {OWNER_URL}",
            "url": "wss://node-b.example:8443/ws",
        },
    }
    assert "result" in here
    assert outbound.finished is None  # a moved channel leaves the connection open
    assert context.refusals.counts == dict.fromkeys(context.refusals.counts, 0)


async def test_a_socket_opened_on_a_draining_node_is_closed_4503_with_reconnect(
    context: TransportContext,
) -> None:
    context.draining = True
    async with session_of(context) as (_, outbound, _):
        await until(outbound, lambda: outbound.finished is not None)
    assert replies(outbound) == [
        {"push": "disconnect", "code": 4503, "reason": "server draining", "reconnect": True}
    ]
    assert len(context.sessions) == 0
