"""A node's identity and its commands to the other nodes, as the application wires them
(server/app.py, server/api.py): the ``node_id`` setting names the node everywhere, and
``POST /api/disconnect`` goes through the broker's ``NodeControl``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import httpx

from tests.support.recording import RecordingBroker
from tidings.brokers.base import NodeCommand
from tidings.brokers.factory import create_broker
from tidings.brokers.memory import LocalNodeControl, MemoryBroker
from tidings.brokers.redis import RedisBroker
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.errors import BrokerError
from tidings.hub.sessions import SessionRegistry
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.status import status_channel

API_KEY: Final = "node-control-test-key"


class RecordingSession:
    """A connected client as the session registry sees it: records its disconnect, and
    leaves the registry then, as a real session does once closed."""

    def __init__(self, sessions: SessionRegistry, client_id: str, user: str) -> None:
        self.client_id = client_id
        self.user = user
        self.goodbyes: list[tuple[int, str, bool]] = []
        self._sessions = sessions
        sessions.add(self)

    def disconnect(
        self, code: int, reason: str, *, reconnect: bool, delay_ms: int | None = None
    ) -> None:
        self.goodbyes.append((code, reason, reconnect))
        self._sessions.remove(self)

    def heartbeat(self, now_s: float) -> None:
        pass


class CutOffBroker(MemoryBroker):
    """A broker that handles node commands here but cannot reach the other nodes."""

    async def send_to_nodes(self, command: NodeCommand) -> int:
        await super().send_to_nodes(command)
        raise BrokerError("the other nodes are out of reach")


@asynccontextmanager
async def api_of(app: TidingsApp) -> AsyncIterator[httpx.AsyncClient]:
    await app.start()
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        async with httpx.AsyncClient(
            transport=transport, base_url="http://127.0.0.1", headers=headers
        ) as client:
            yield client
    finally:
        await app.stop()


async def disconnect(http: httpx.AsyncClient, user: str, **fields: Any) -> httpx.Response:
    return await http.post("/api/disconnect", json={"user": user, **fields})


def test_the_node_id_setting_names_the_node_in_client_ids_and_its_status_channel() -> None:
    app = TidingsApp(Settings(node_id="east-1"))
    assert app.context.node_id == "east-1"
    assert app.context.new_client_id() == "east-1.1"
    assert app.status.channel == status_channel("east-1")


def test_a_remote_broker_is_given_the_node_id_for_its_entries_and_commands() -> None:
    broker = create_broker(
        "redis://127.0.0.1:6379/0", None, Namespaces(), DedupeOptions(), node_id="east-1"
    )
    assert isinstance(broker, RedisBroker)
    assert broker.node_id == "east-1"
    assert broker.pubsub_client_name == "tidings-pubsub-east-1"


def test_a_broker_carrying_no_node_commands_leaves_them_to_this_node() -> None:
    embedded = TidingsApp(Settings(), broker=RecordingBroker(MemoryBroker(Namespaces())))
    default = TidingsApp(Settings())
    assert isinstance(embedded.control, LocalNodeControl)
    assert default.control is default.hub.broker.inner  # type: ignore[attr-defined]  # metered


async def test_disconnect_closes_the_users_sessions_here_and_counts_the_nodes_told() -> None:
    app = TidingsApp(Settings(api_key=API_KEY))
    async with api_of(app) as http:
        phone = RecordingSession(app.sessions, "n.1", "alice")
        laptop = RecordingSession(app.sessions, "n.2", "alice")
        other = RecordingSession(app.sessions, "n.3", "bob")
        answer = await disconnect(http, "alice", code=4500, reason="come back")
        nobody = await disconnect(http, "carol")
    assert (answer.status_code, answer.json()) == (200, {"disconnected": 2, "nodes": 1})
    assert phone.goodbyes == laptop.goodbyes == [(4500, "come back", True)]
    assert other.goodbyes == [(1001, "server shutting down", True)]  # only the drain's
    assert nobody.json() == {"disconnected": 0, "nodes": 1}


async def test_disconnect_says_so_when_the_other_nodes_could_not_be_told() -> None:
    app = TidingsApp(Settings(api_key=API_KEY), broker=CutOffBroker(Namespaces()))
    async with api_of(app) as http:
        session = RecordingSession(app.sessions, "n.1", "alice")
        answer = await disconnect(http, "alice")
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "unavailable"
    assert "closed 1 of the user's connections on this node" in error["message"]
    assert session.goodbyes == [(4003, "disconnected by the application", False)]
