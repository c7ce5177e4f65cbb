"""A connection ends when its token expires (transports/connection.py ``watch_expiry``):
4001 "token expired" with reconnect advice, on the node's shared deadline wheel, with
no deadline left behind by a refresh or by the connection's end."""

from __future__ import annotations

import asyncio
import json
import time

from tidings.brokers.memory import MemoryBroker
from tidings.core.namespace import Namespaces, default_namespaces
from tidings.core.permission import Credentials
from tidings.core.wire import EncodedPublication
from tidings.hub.hub import Hub
from tidings.hub.registry import PresenceEvent
from tidings.hub.sessions import SessionRegistry
from tidings.server.auth import Authenticator
from tidings.transports.connection import StreamConnection
from tidings.transports.context import Limits, TransportContext


class FinishRecorder:
    """An outbound that keeps its ``finish`` and lets a test await it."""

    def __init__(self) -> None:
        self.finished: tuple[str, int, str] | None = None
        self.done = asyncio.Event()

    @property
    def pending_bytes(self) -> int:
        return 0

    def put(self, chunk: str) -> None:
        pass

    def discard_pending(self) -> None:
        pass

    def finish(self, goodbye: str, code: int, reason: str) -> None:
        self.finished = (goodbye, code, reason)
        self.done.set()

    def end_silently(self) -> None:
        pass

    async def wait_sent(self) -> None:
        pass

    async def run(self) -> None:
        pass

    async def stop(self, *, client_left: bool) -> None:
        pass


class Connection(StreamConnection):
    """The transport-specific part reduced to a JSON goodbye."""

    def deliver(self, publication: EncodedPublication) -> None:
        pass

    def deliver_presence(self, event: PresenceEvent) -> None:
        pass

    def _goodbye(
        self, code: int, reason: str, reconnect: bool, url: str | None, delay_ms: int | None
    ) -> str:
        return json.dumps({"code": code, "reason": reason, "reconnect": reconnect})

    def _heartbeat_chunk(self) -> str:
        return ""

    @property
    def _heartbeat_interval_s(self) -> float:
        return 25.0


def context() -> TransportContext:
    namespaces = Namespaces(default_namespaces())
    return TransportContext(
        hub=Hub(MemoryBroker(namespaces)),
        sessions=SessionRegistry(10),
        authenticator=Authenticator(None),
        namespaces=namespaces,
        limits=Limits(),
        ping_interval_s=25.0,
    )


def pending(shared: TransportContext) -> int:
    return sum(len(due) for due in shared.deadlines._by_grain.values())


async def test_a_connection_is_told_token_expired_and_to_reconnect_at_its_tokens_exp() -> None:
    out = FinishRecorder()
    connection = Connection(context(), out)
    connection.credentials = Credentials("alice", expires=int(time.time()) + 1)
    connection.watch_expiry()
    await asyncio.wait_for(out.done.wait(), 10)
    assert out.finished is not None
    goodbye, code, reason = out.finished
    assert (code, reason) == (4001, "token expired")
    assert json.loads(goodbye)["reconnect"] is True


async def test_an_expired_token_ends_the_connection_at_once() -> None:
    out = FinishRecorder()
    connection = Connection(context(), out)
    connection.credentials = Credentials("alice", expires=int(time.time()) - 1)
    connection.watch_expiry()
    assert out.finished is not None


async def test_a_new_token_replaces_the_deadline_and_the_end_removes_it() -> None:
    shared = context()
    connections = [Connection(shared, FinishRecorder()) for _ in range(100)]
    later = int(time.time()) + 3600
    for connection in connections:
        connection.credentials = Credentials("alice", expires=later)
        connection.watch_expiry()
        connection.credentials = Credentials("alice", expires=later + 60)  # a refresh
        connection.watch_expiry()
    assert pending(shared) == 100  # one deadline each, none left by the first tokens
    # A hundred connections expiring in the same second share one grain (one timer).
    assert len([due for due in shared.deadlines._by_grain.values() if due]) == 1
    for connection in connections:
        await connection._leave_all()
    assert pending(shared) == 0


async def test_a_token_without_exp_sets_no_deadline() -> None:
    shared = context()
    connection = Connection(shared, FinishRecorder())
    connection.credentials = Credentials("alice")
    connection.watch_expiry()
    assert pending(shared) == 0
