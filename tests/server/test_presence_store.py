"""Which ``PresenceStore`` a node keeps presence in (server/app.py): the broker's own,
one for this node alone when the broker keeps none, or the one an embedding application
gives; ``GET /api/presence`` answers from it."""

from __future__ import annotations

from typing import Final

import httpx

from tests.support.recording import RecordingBroker, RecordingPresence
from tidings.brokers.memory import LocalPresence, MemoryBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.server.app import TidingsApp
from tidings.server.config import Settings

API_KEY: Final = "presence-store-test-key"
ROOM: Final = ChannelName("room:1")


def test_a_node_keeps_presence_in_its_brokers_own_store() -> None:
    broker = MemoryBroker(Namespaces())
    assert TidingsApp(Settings(), broker=broker).hub.presence_store is broker.presence_store


def test_a_broker_keeping_no_presence_leaves_it_to_this_node() -> None:
    app = TidingsApp(Settings(), broker=RecordingBroker(MemoryBroker(Namespaces())))
    assert isinstance(app.hub.presence_store, LocalPresence)


async def test_the_presence_api_answers_from_the_store_an_application_gives() -> None:
    namespaces = {**Settings().namespaces, NamespaceName("room"): NamespaceOptions(presence=True)}
    settings = Settings(api_key=API_KEY, namespaces=namespaces)
    store = RecordingPresence()
    await store.join(ROOM, "elsewhere.1", "alice")  # as another node's client
    app = TidingsApp(settings, presence=store)
    await app.start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://127.0.0.1",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as http:
            answer = await http.get("/api/presence", params={"channel": ROOM})
    finally:
        await app.stop()
    assert app.hub.presence_store is store
    assert answer.json() == {"clients": {"elsewhere.1": {"user": "alice"}}}
