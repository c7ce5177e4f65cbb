"""``GET /metrics`` (server/metrics.py): every metric, what moves it, one registry per app."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.recording import RecordingSubscriber
from tests.support.server import start_server
from tests.support.sse import sse_stream
from tests.support.ws import ws_client
from tidings.core.channel import ChannelName
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.metrics import TIDINGS_VERSION

DOCS: Final = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
METRIC_NAMES: Final = (
    "tidings_connections",
    "tidings_channels",
    "tidings_subscriptions",
    "tidings_publications",
    "tidings_deliveries",
    "tidings_delivery_failures",
    "tidings_poll_requests",
    "tidings_publish_seconds",
    "tidings_history_read_seconds",
    "tidings_publish_to_fanout_seconds",
    "tidings_fanout_seconds",
    "tidings_refusals",
    "tidings_disconnects",
    "tidings_forwarded",
    "tidings_build_info",
    "tidings_hot_channel_deliveries_per_second",
    "tidings_hot_channel_publications_per_second",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
)
OBSERVE_INTERVAL_S: Final = 0.01  # spacing between looks at /metrics, never a wait


@pytest.fixture
async def app() -> AsyncIterator[TidingsApp]:
    node = TidingsApp(Settings())
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


def http_of(app: TidingsApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(http: httpx.AsyncClient) -> Samples:
    """Every sample of ``/metrics`` by name and labels."""
    response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


async def test_metrics_are_in_prometheus_text_format_with_every_documented_metric(
    app: TidingsApp,
) -> None:
    async with http_of(app) as http:
        response = await http.get("/metrics")
    families = {family.name for family in text_string_to_metric_families(response.text)}
    assert set(METRIC_NAMES) <= families
    documented = DOCS.read_text()
    for name in METRIC_NAMES:
        assert f"`{name}" in documented, f"{name} is not described in docs/metrics.md"


async def test_refusals_and_closes_are_counted_by_reason_and_code(app: TidingsApp) -> None:
    async with http_of(app) as http:
        before = await scrape(http)
        app.context.refusals.refused("rate_limit", ("127.0.0.1", 5000), "slow down")
        app.context.refusals.disconnected(4500)
        after = await scrape(http)
    assert value(before, "tidings_refusals_total", reason="rate_limit") == 0
    assert value(after, "tidings_refusals_total", reason="rate_limit") == 1
    assert value(after, "tidings_disconnects_total", code="4500") == 1
    assert value(after, "tidings_build_info", version=TIDINGS_VERSION) == 1


async def test_publications_are_counted_once_and_their_latency_observed(app: TidingsApp) -> None:
    for n in range(3):
        await app.publish("room:1", {"n": n})
    await app.publish("room:1", {"n": 0}, key="k")
    await app.publish("room:1", {"n": 0}, key="k")  # a repeat is not a new publication
    async with http_of(app) as http:
        samples = await scrape(http)
    assert value(samples, "tidings_publications_total") == 4
    assert value(samples, "tidings_publish_seconds_count") == 5


async def test_deliveries_channels_and_fan_out_follow_local_subscribers(app: TidingsApp) -> None:
    first, second = RecordingSubscriber("a"), RecordingSubscriber("b")
    await app.hub.subscribe(ChannelName("room:1"), first)
    await app.hub.subscribe(ChannelName("room:1"), second)
    await app.publish("room:1", "hi")
    await app.publish("room:1", "again")
    async with http_of(app) as http:
        samples = await scrape(http)
    assert value(samples, "tidings_deliveries_total") == 4
    assert value(samples, "tidings_channels") == 1
    assert value(samples, "tidings_subscriptions") == 2
    assert value(samples, "tidings_fanout_seconds_count") == 2
    assert value(samples, "tidings_publish_to_fanout_seconds_count") == 2
    assert value(samples, "tidings_history_read_seconds_count") == 2  # one per subscribe


async def test_two_apps_in_one_process_keep_separate_registries() -> None:
    one, two = TidingsApp(Settings()), TidingsApp(Settings())
    await one.start()
    await two.start()
    try:
        await one.publish("room:1", 1)
        async with http_of(one) as first, http_of(two) as second:
            assert value(await scrape(first), "tidings_publications_total") == 1
            assert value(await scrape(second), "tidings_publications_total") == 0
    finally:
        await one.stop()
        await two.stop()


async def test_polls_are_counted_in_flight_and_by_kind(app: TidingsApp) -> None:
    async with http_of(app) as http:
        first = await http.get("/poll", params={"channel": "room:1"})
        cursor = first.json()["cursor"]
        held = asyncio.create_task(
            http.get("/poll", params={"channel": "room:1", "cursor": cursor, "wait": "30"})
        )
        async with asyncio.timeout(10):
            while True:  # observed, not assumed after a delay
                if value(await scrape(http), "tidings_connections", transport="poll") == 1:
                    break
                await asyncio.sleep(OBSERVE_INTERVAL_S)
        await app.publish("room:1", "wake up")
        assert (await held).json()["publications"][0]["data"] == "wake up"
        samples = await scrape(http)
    assert value(samples, "tidings_connections", transport="poll") == 0
    assert value(samples, "tidings_poll_requests_total", kind="short") == 1
    assert value(samples, "tidings_poll_requests_total", kind="long") == 1


@pytest.mark.e2e
async def test_connections_are_counted_by_transport_on_a_real_server() -> None:
    server = await asyncio.to_thread(start_server)
    try:
        async with (
            httpx.AsyncClient(base_url=server.http_url, timeout=30.0) as http,
            ws_client(server.ws_url) as client,
            sse_stream(http, {"channel": "room:1"}) as stream,
        ):
            await client.result("subscribe", channel="room:2")
            await stream.next_event()  # subscribed
            samples = await scrape(http)
            assert value(samples, "tidings_connections", transport="ws") == 1
            assert value(samples, "tidings_connections", transport="sse") == 1
            assert value(samples, "tidings_channels") == 2
    finally:
        server.kill()
