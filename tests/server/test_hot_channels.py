"""Hot channels on a node (server/hot_channels.py): counted in the hub's fan-out, read
from /metrics (top ones only), ``GET /api/channels?top=N`` and warned of once per
crossing. Windows are closed by the test, not by waiting for the timer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.recording import RecordingSubscriber
from tidings.core.channel import ChannelName
from tidings.core.channel_heat import EXACT_PER_WINDOW
from tidings.server.app import TidingsApp
from tidings.server.config import Settings, load_settings
from tidings.server.hot_channels import HOT_CHANNELS_METRIC_TOP, HotChannelWindows

API_KEY = "hot-channels-test-key"
AUTH = {"authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def app() -> AsyncIterator[TidingsApp]:
    node = TidingsApp(Settings(api_key=API_KEY, hot_channel_deliveries_per_s=50.0))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def http_of(app: TidingsApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


def windows_of(app: TidingsApp) -> HotChannelWindows:
    windows = app.hot_channels
    assert windows is not None
    return windows


async def subscribe(app: TidingsApp, channel: str, count: int) -> None:
    for n in range(count):
        await app.hub.subscribe(ChannelName(channel), RecordingSubscriber(f"{channel}-{n}"))


async def test_api_lists_busiest_channels_first_with_rates_and_subscribers(
    app: TidingsApp,
) -> None:
    await subscribe(app, "room:big", 20)
    await subscribe(app, "room:small", 1)
    for n in range(5):
        await app.publish("room:big", n)
    for n in range(30):
        await app.publish("room:small", n)
    await app.publish("room:empty", 0)
    windows_of(app).close_window(time.monotonic())
    async with http_of(app) as http:
        response = await http.get("/api/channels?top=2", headers=AUTH)
    assert response.status_code == 200
    channels = response.json()["channels"]
    assert list(channels) == ["room:big", "room:small"]
    big = channels["room:big"]
    assert big["subscribers"] == 20
    # 5 publications, each delivered to 20 subscribers (rates are rounded to 0.01).
    assert big["deliveries_per_s"] == pytest.approx(20 * big["publications_per_s"], rel=1e-3)
    assert big["deliveries_error_per_s"] == 0.0


async def test_api_top_needs_the_api_key_like_every_server_api_call(app: TidingsApp) -> None:
    async with http_of(app) as http:
        response = await http.get("/api/channels?top=3")
    assert response.status_code == 401


@pytest.mark.parametrize("top", ["0", "101", "many"])
async def test_api_refuses_a_top_out_of_range(app: TidingsApp, top: str) -> None:
    async with http_of(app) as http:
        response = await http.get(f"/api/channels?top={top}", headers=AUTH)
    assert response.status_code == 400
    assert "top must be a whole number from 1 to 100" in response.json()["error"]["message"]


async def test_metrics_label_only_the_top_channels(app: TidingsApp) -> None:
    for n in range(3 * HOT_CHANNELS_METRIC_TOP):
        await subscribe(app, f"room:{n}", 1)
        await app.publish(f"room:{n}", n)
    await app.publish("room:7", "again")
    windows_of(app).close_window(time.monotonic())
    async with http_of(app) as http:
        text = (await http.get("/metrics")).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = families["tidings_hot_channel_deliveries_per_second"].samples
    assert len(samples) == HOT_CHANNELS_METRIC_TOP
    assert samples[0].labels == {"channel": "room:7"}
    assert len(families["tidings_hot_channel_publications_per_second"].samples) == (
        HOT_CHANNELS_METRIC_TOP
    )


async def test_hot_channel_is_warned_of_once_per_crossing(
    app: TidingsApp, caplog: pytest.LogCaptureFixture
) -> None:
    windows = windows_of(app)
    await subscribe(app, "room:hot", 10)
    caplog.set_level(logging.WARNING, logger="tidings.server.hot_channels")
    now_s = time.monotonic()
    windows.close_window(now_s)  # a fresh window of exactly one second from here
    for step, publications in enumerate((20, 20, 0, 20), start=1):
        for n in range(publications):  # 200 deliveries/s over 50/s, or none
            await app.publish("room:hot", n)
        windows.close_window(now_s + step)
    warnings = [r for r in caplog.records if "hot channel room:hot" in r.getMessage()]
    assert len(warnings) == 2  # the first window and the one after it cooled down
    assert "200 deliveries/s" in warnings[0].getMessage()


async def test_node_closes_its_windows_by_itself() -> None:
    node = TidingsApp(Settings(api_key=API_KEY, hot_channel_window_s=0.05))
    await node.start()
    try:
        await subscribe(node, "room:timed", 2)
        async with http_of(node) as http:
            deadline = time.monotonic() + 10.0
            listed: dict[str, object] = {}
            while "room:timed" not in listed:
                assert time.monotonic() < deadline, "no window closed with room:timed in it"
                await node.publish("room:timed", "tick")
                response = await http.get("/api/channels?top=5", headers=AUTH)
                listed = response.json()["channels"]
                await asyncio.sleep(0.01)  # spacing between looks, never a wait for a result
    finally:
        await node.stop()


async def test_node_with_hot_channels_off_counts_nothing_and_says_so() -> None:
    node = TidingsApp(Settings(api_key=API_KEY, hot_channels=False))
    await node.start()
    try:
        assert node.hub.heat is None
        assert node.hot_channels is None
        async with http_of(node) as http:
            response = await http.get("/api/channels?top=3", headers=AUTH)
            metrics = (await http.get("/metrics")).text
        assert response.status_code == 400
        assert "hot_channels = false" in response.json()["error"]["message"]
        assert "tidings_hot_channel" not in metrics
    finally:
        await node.stop()


async def test_node_samples_light_publications_as_hot_channel_sampling_says() -> None:
    assert load_settings().hot_channel_sampling == 16  # the default samples
    for every in (4, 1):
        node = TidingsApp(Settings(api_key=API_KEY, hot_channel_sampling=every))
        await node.start()
        try:
            heat = node.hub.heat
            assert heat is not None
            assert heat.sample_every == every
            await subscribe(node, "user:one", 1)
            for n in range(EXACT_PER_WINDOW + 200):
                await node.publish("user:one", n)
            # Past the window's exact part, one-delivery publications are sampled.
            assert bool(heat.sampled.counts) == (every > 1)
            heat.close_window(1.0)
            (rate,) = heat.top(1)
            if every == 1:
                assert (rate.publications_per_s, rate.publications_error_per_s) == (
                    EXACT_PER_WINDOW + 200,
                    0.0,
                )
            else:  # an estimate, with the sampling's margin
                assert rate.publications_error_per_s > 0
        finally:
            await node.stop()
