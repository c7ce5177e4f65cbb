"""The status channel and page (server/status.py): published while watched, never else."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.recording import RecordingSubscriber
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.channel_heat import ChannelRate
from tidings.core.namespace import NamespaceOptions, Policy
from tidings.server.app import TidingsApp
from tidings.server.config import Settings, load_settings
from tidings.server.metrics import NodeFigures
from tidings.server.status import STATUS_HISTORY, status_data, with_status_namespace


@pytest.fixture
async def app() -> AsyncIterator[TidingsApp]:
    """A node whose hub runs but whose status timer does not: the tests tick it."""
    node = TidingsApp(Settings())
    await node.hub.start()
    try:
        yield node
    finally:
        await node.hub.close()


def figures(publications: int, deliveries: int) -> NodeFigures:
    return NodeFigures(
        connections={"ws": 2, "sse": 1, "poll": 0},
        channels=3,
        subscriptions=4,
        publications=publications,
        deliveries=deliveries,
        delivery_failures=0,
    )


def test_status_data_gives_rates_since_the_previous_figures() -> None:
    data = json.loads(status_data(figures(30, 100), figures(10, 40), elapsed_s=2.0))
    assert data == {
        "connections": {"ws": 2, "sse": 1, "poll": 0},
        "channels": 3,
        "subscriptions": 4,
        "publications": 30,
        "deliveries": 100,
        "publications_per_s": 10.0,
        "deliveries_per_s": 30.0,
        "hot_channels": [],
    }


def test_status_data_lists_the_hot_channels_given() -> None:
    hot = ChannelRate(ChannelName("room:1"), 2.0, 0.0, 400.0, 0.0)
    data = json.loads(status_data(figures(30, 100), None, elapsed_s=1.0, hot=[hot]))
    assert data["hot_channels"] == [
        {
            "channel": "room:1",
            "publications_per_s": 2.0,
            "publications_error_per_s": 0.0,
            "deliveries_per_s": 400.0,
            "deliveries_error_per_s": 0.0,
        }
    ]


def test_status_data_without_previous_figures_has_zero_rates() -> None:
    data = json.loads(status_data(figures(30, 100), None, elapsed_s=1.0))
    assert (data["publications_per_s"], data["deliveries_per_s"]) == (0.0, 0.0)


def test_the_status_namespace_keeps_a_minute_and_the_default_policy() -> None:
    settings = load_settings(environ={"TIDINGS_NAMESPACES__DEFAULT__POLICY": "token"})
    options = with_status_namespace(settings).namespaces[NamespaceName("tidings")]
    assert options.policy is Policy.TOKEN
    assert options.history == STATUS_HISTORY
    assert not options.client_publish


def test_a_configured_status_namespace_is_left_as_it_is() -> None:
    mine = NamespaceOptions(policy=Policy.PUBLIC, presence=True)
    settings = Settings(namespaces={NamespaceName("tidings"): mine})
    assert with_status_namespace(settings).namespaces[NamespaceName("tidings")] is mine


async def test_nothing_is_published_while_nobody_watches(app: TidingsApp) -> None:
    assert await app.status.tick() is False
    read = await app.hub.history(app.status.channel)
    assert read.head.offset == 0


async def test_the_figures_are_published_to_whoever_watches(app: TidingsApp) -> None:
    watcher = RecordingSubscriber("status-page")
    await app.hub.subscribe(app.status.channel, watcher)
    await app.publish("room:1", "counted")
    assert await app.status.tick() is True
    [delivered] = watcher.delivered
    assert delivered.publication.channel == app.status.channel
    data = json.loads(delivered.publication.data)
    assert data["publications"] == 1
    assert data["channels"] == 1  # the status channel itself
    assert data["connections"] == {"ws": 0, "sse": 0, "poll": 0}


async def test_the_published_figures_list_the_hot_channels(app: TidingsApp) -> None:
    watcher = RecordingSubscriber("status-page")
    await app.hub.subscribe(app.status.channel, watcher)
    await app.hub.subscribe(ChannelName("room:busy"), RecordingSubscriber("reader"))
    for n in range(3):
        await app.publish("room:busy", n)
    windows = app.hot_channels
    assert windows is not None
    windows.close_window(time.monotonic())
    assert await app.status.tick() is True
    data = json.loads(watcher.delivered[-1].publication.data)
    assert [hot["channel"] for hot in data["hot_channels"]] == ["room:busy"]


async def test_the_status_page_names_this_nodes_channel() -> None:
    app = TidingsApp(Settings())
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
            page = await http.get("/status")
            script = await http.get("/static/status.js")
    finally:
        await app.stop()
    assert page.status_code == 200
    assert f'content="{app.status.channel}"' in page.text
    assert app.status.channel == ChannelName(f"tidings:status@{app.context.node_id}")
    assert script.status_code == 200
    assert "javascript" in script.headers["content-type"]
