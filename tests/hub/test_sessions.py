"""The session registry (hub/sessions.py): the node's connection limit, and within it
the allowance of sessions not authenticated yet."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tidings.errors import TooManyRequests
from tidings.hub.sessions import SessionRegistry


@dataclass
class FakeSession:
    client_id: str
    user: str = ""

    def disconnect(
        self, code: int, reason: str, *, reconnect: bool, delay_ms: int | None = None
    ) -> None:
        raise AssertionError("the registry never disconnects")

    def heartbeat(self, now_s: float) -> None:
        raise AssertionError("the registry never sends heartbeats")


def test_unauthenticated_sessions_are_refused_past_their_allowance_but_not_others() -> None:
    registry = SessionRegistry(10, 2)
    registry.add(FakeSession("a"), authenticated=False)
    registry.add(FakeSession("b"), authenticated=False)
    with pytest.raises(TooManyRequests, match="2 connections that have not authenticated"):
        registry.add(FakeSession("c"), authenticated=False)
    registry.add(FakeSession("d"))  # one with a token still gets a slot
    assert len(registry) == 3


def test_a_session_leaves_the_allowance_when_it_authenticates_or_ends() -> None:
    registry = SessionRegistry(10, 1)
    first = FakeSession("a")
    registry.add(first, authenticated=False)
    registry.mark_authenticated(first)
    second = FakeSession("b")
    registry.add(second, authenticated=False)
    registry.remove(second)
    registry.add(FakeSession("c"), authenticated=False)
    assert len(registry) == 2


def test_the_node_limit_counts_every_session() -> None:
    registry = SessionRegistry(2, 2)
    registry.add(FakeSession("a"))
    registry.add(FakeSession("b"), authenticated=False)
    with pytest.raises(TooManyRequests, match="2 connections, its limit"):
        registry.add(FakeSession("c"))
