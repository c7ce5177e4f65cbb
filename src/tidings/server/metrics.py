"""Node metrics: the figures of ``GET /metrics`` (Prometheus text format) and of the
status page, from one place.

I/O: none of its own; it reads the node's bookkeeping (sessions, hub counters) when
asked, and times broker calls by wrapping the broker. Each ``TidingsApp`` has its own
``Metrics`` with its own ``CollectorRegistry`` (never prometheus-client's global one),
so several applications in one process (tests, embedding) do not collide.

What is counted where:

* gauges (connections by transport, channels, subscriptions) are computed at scrape
  time from the session registry and the hub, so idle connections cost nothing;
* publications, and the latency histograms of publish, history reads and fan-out,
  come from ``MeteredBroker``, a ``Broker`` that delegates to the real one and times
  each call: no broker and no transport knows about metrics;
* deliveries are the hub's own counters (``Hub.deliveries``), read at scrape time;
* hot channels are the hub's ``ChannelHeat``: the rates of its last window, for the
  ``HOT_CHANNELS_METRIC_TOP`` busiest channels only (a label per channel, bounded);
* polls in flight and poll requests are counted by the poll transport (``PollCounters``);
* refusals by reason and server-initiated closes by code are the transports' own
  counters (``Refusals``), read at scrape time;
* publications and skipped records of sources are the sources' own counters
  (``sources.base.SOURCE_COUNTERS``, one per process), read at scrape time;
* the process's memory, CPU and open files (against its limit: the real connection
  limit) are prometheus-client's ``ProcessCollector``; ``tidings_build_info`` names
  the version.

Every metric is described in docs/metrics.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Final, Literal

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response

from tidings.brokers.base import (
    Broker,
    GapHandler,
    HistoryRead,
    PublicationHandler,
    PublishResult,
    ReportsGaps,
)
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.server.hot_channels import HOT_CHANNELS_METRIC_TOP
from tidings.sources.base import SOURCE_COUNTERS
from tidings.transports.refusals import REFUSAL_REASONS, Refusals
from tidings.transports.sse import SseSession
from tidings.transports.websocket import WebSocketSession

PROMETHEUS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
# Latencies of a node on one machine: from a tenth of a millisecond to a few seconds.
LATENCY_BUCKETS_S: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
TRANSPORT_LABELS: Final = ("ws", "sse", "poll")


def _tidings_version() -> str:
    try:
        return version("tidings")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


TIDINGS_VERSION: Final = _tidings_version()


@dataclass(frozen=True, slots=True)
class NodeFigures:
    """A snapshot of what the node is doing, as the status page and /metrics show it."""

    connections: dict[str, int]
    channels: int
    subscriptions: int
    publications: int
    deliveries: int
    delivery_failures: int


class Metrics:
    """The metrics of one node (one ``TidingsApp``)."""

    def __init__(self, sessions: SessionRegistry) -> None:
        self._hub: Hub | None = None
        self._refusals: Refusals | None = None
        self._forwarded: Mapping[str, int] = {}
        self._sessions = sessions
        self.publications = 0
        self.polls_in_flight = 0
        self.registry = CollectorRegistry()
        registry = self.registry
        self.publish_seconds = Histogram(
            "tidings_publish_seconds",
            "Time the broker took to publish (sequence, store and hand on) one publication.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.history_read_seconds = Histogram(
            "tidings_history_read_seconds",
            "Time the broker took to read one channel's history (subscribe, poll, history).",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.publish_to_fanout_seconds = Histogram(
            "tidings_publish_to_fanout_seconds",
            "From a publication's server timestamp to this node handing it to its "
            "subscribers' outbound queues.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.fanout_seconds = Histogram(
            "tidings_fanout_seconds",
            "Time this node took to queue one publication on all its local subscribers.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        # Plain counts, read at scrape time: a poll is a hot path, a Counter takes a lock.
        self.poll_requests: dict[Literal["short", "long"], int] = {"short": 0, "long": 0}
        registry.register(_NodeCollector(self))
        ProcessCollector(registry=registry)

    def read_counters_of(self, hub: Hub) -> None:
        """Read channels and deliveries from ``hub`` (made after ``Metrics``: it takes
        the metered broker)."""
        self._hub = hub

    @property
    def hub(self) -> Hub | None:
        """The hub whose counters are read, once ``read_counters_of`` named it."""
        return self._hub

    def read_forwards_of(self, forwarded: Mapping[str, int]) -> None:
        """Read the counts of server API calls forwarded to owners (hashing mode)."""
        self._forwarded = forwarded

    @property
    def forwarded(self) -> Mapping[str, int]:
        """Server API calls forwarded to owners, by outcome."""
        return self._forwarded

    def read_refusals_of(self, refusals: Refusals) -> None:
        """Read refusals and server-initiated closes from the transports' ``refusals``."""
        self._refusals = refusals

    def refusal_counts(self) -> tuple[dict[str, int], dict[int, int]]:
        """Refusals by reason, and connections the node closed by close code."""
        refusals = self._refusals
        if refusals is None:
            return dict.fromkeys(REFUSAL_REASONS, 0), {}
        return {str(reason): n for reason, n in refusals.counts.items()}, dict(refusals.disconnects)

    def figures(self) -> NodeFigures:
        """Return what the node is doing now."""
        connections = dict.fromkeys(TRANSPORT_LABELS, 0)
        for session in self._sessions:
            if isinstance(session, WebSocketSession):
                connections["ws"] += 1
            elif isinstance(session, SseSession):
                connections["sse"] += 1
        connections["poll"] = self.polls_in_flight
        hub = self._hub
        counts = hub.channels() if hub is not None else {}
        return NodeFigures(
            connections=connections,
            channels=len(counts),
            subscriptions=sum(counts.values()),
            publications=self.publications,
            deliveries=hub.deliveries if hub is not None else 0,
            delivery_failures=hub.delivery_failures if hub is not None else 0,
        )

    def exposition(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)

    async def endpoint(self, _request: Request) -> Response:
        """``GET /metrics``."""
        return Response(self.exposition(), media_type=PROMETHEUS_CONTENT_TYPE)

    def metered(self, broker: Broker) -> MeteredBroker:
        """Return ``broker`` wrapped so that its calls are counted and timed here."""
        return MeteredBroker(broker, self)

    def poll_started(self) -> None:
        """A poll is in flight (``PollCounters``)."""
        self.polls_in_flight += 1

    def poll_ended(self, kind: Literal["short", "long"]) -> None:
        """A poll of ``kind`` was answered, or its client left (``PollCounters``)."""
        self.polls_in_flight -= 1
        self.poll_requests[kind] += 1

    def observe_fan_out(self, publication: Publication, started_s: float, ended_s: float) -> None:
        """Record one publication handed to local subscribers (wall-clock seconds)."""
        self.publish_to_fanout_seconds.observe(max(0.0, started_s - publication.ts / 1000))
        self.fanout_seconds.observe(max(0.0, ended_s - started_s))


class _NodeCollector(Collector):
    """The figures read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        figures = self._metrics.figures()
        connections = GaugeMetricFamily(
            "tidings_connections",
            "Client connections open on this node, by transport (poll: requests in flight).",
            labels=["transport"],
        )
        for transport, count in figures.connections.items():
            connections.add_metric([transport], count)
        yield connections
        yield GaugeMetricFamily(
            "tidings_channels",
            "Channels with at least one subscriber on this node.",
            value=figures.channels,
        )
        yield GaugeMetricFamily(
            "tidings_subscriptions",
            "Subscriptions held on this node (a connection holding 3 channels counts 3).",
            value=figures.subscriptions,
        )
        polls = CounterMetricFamily(
            "tidings_poll_requests",
            "Poll requests answered, by kind (short: wait=0, long: wait>0).",
            labels=["kind"],
        )
        for kind, count in self._metrics.poll_requests.items():
            polls.add_metric([kind], count)
        yield polls
        yield CounterMetricFamily(
            "tidings_publications",
            "Publications made through this node (server API, WebSocket, in-process).",
            value=figures.publications,
        )
        yield CounterMetricFamily(
            "tidings_deliveries",
            "Publications queued on a local subscriber (one per subscriber per publication).",
            value=figures.deliveries,
        )
        yield CounterMetricFamily(
            "tidings_delivery_failures",
            "Deliveries that failed with an error in the subscriber (a tidings bug).",
            value=figures.delivery_failures,
        )
        by_reason, by_code = self._metrics.refusal_counts()
        refusals = CounterMetricFamily(
            "tidings_refusals",
            "Requests, connections and commands refused, by reason (token and api_key: "
            "authentication failures; slow_consumer: cuts; rate_limit: commands over the "
            "rate).",
            labels=["reason"],
        )
        for reason, count in by_reason.items():
            refusals.add_metric([reason], count)
        yield refusals
        disconnects = CounterMetricFamily(
            "tidings_disconnects",
            "Connections this node closed, by close code (docs/protocol.md §3).",
            labels=["code"],
        )
        for code, count in sorted(by_code.items()):
            disconnects.add_metric([str(code)], count)
        yield disconnects
        forwarded = CounterMetricFamily(
            "tidings_forwarded",
            "Server API calls sent to a channel's owner (hashing mode), by outcome "
            "(answered, stale_ring: refused as made with an old ring, unreachable).",
            labels=["outcome"],
        )
        for outcome, count in self._metrics.forwarded.items():
            forwarded.add_metric([outcome], count)
        yield forwarded
        yield from _source_metrics()
        yield from self._hot_channels()
        info = GaugeMetricFamily(
            "tidings_build_info",
            "The tidings version this node runs (always 1).",
            labels=["version"],
        )
        info.add_metric([TIDINGS_VERSION], 1)
        yield info

    def _hot_channels(self) -> Iterator[Metric]:
        hub = self._metrics.hub
        heat = hub.heat if hub is not None else None
        if heat is None:
            return
        deliveries = GaugeMetricFamily(
            "tidings_hot_channel_deliveries_per_second",
            f"Deliveries per second to this node's subscribers of its {HOT_CHANNELS_METRIC_TOP} "
            "busiest channels, over the last hot_channel_window.",
            labels=["channel"],
        )
        publications = GaugeMetricFamily(
            "tidings_hot_channel_publications_per_second",
            "Publications per second reaching this node's fan-out in those channels.",
            labels=["channel"],
        )
        for rate in heat.top(HOT_CHANNELS_METRIC_TOP):
            deliveries.add_metric([rate.channel], rate.deliveries_per_s)
            publications.add_metric([rate.channel], rate.publications_per_s)
        yield deliveries
        yield publications


def _source_metrics() -> Iterator[Metric]:
    """The counts of the sources run in this process (``tidings.sources``)."""
    published_by_source, skipped_by_reason = SOURCE_COUNTERS.snapshot()
    published = CounterMetricFamily(
        "tidings_source_published",
        "New publications made by each source ([[sources]]); a repeat its idempotency "
        "key caught is not counted.",
        labels=["source"],
    )
    for source, count in sorted(published_by_source.items()):
        published.add_metric([source], count)
    yield published
    skipped = CounterMetricFamily(
        "tidings_source_skipped",
        "Records a source skipped, by reason (a table's null_column, a Kafka record's "
        "not_json, no_channel or no_data; any source's invalid_channel, too_large or "
        "invalid_data).",
        labels=["source", "reason"],
    )
    for (source, reason), count in sorted(skipped_by_reason.items()):
        skipped.add_metric([source, reason], count)
    yield skipped


class MeteredBroker:
    """A ``Broker`` that delegates every call and records it in ``Metrics``."""

    def __init__(self, broker: Broker, metrics: Metrics) -> None:
        self.inner = broker
        self._metrics = metrics

    async def start(self, on_publication: PublicationHandler) -> None:
        """Start the broker, timing each publication's fan-out (see ``Broker.start``)."""
        metrics = self._metrics

        def handle(publication: Publication) -> None:
            started_s = time.time()
            try:
                on_publication(publication)
            finally:
                metrics.observe_fan_out(publication, started_s, time.time())

        await self.inner.start(handle)

    def listen_gaps(self, on_gap: GapHandler) -> None:
        """Pass ``on_gap`` to the broker if it reports gaps between publications
        (``ReportsGaps``: a relay); others never call it."""
        if isinstance(self.inner, ReportsGaps):
            self.inner.listen_gaps(on_gap)

    async def close(self) -> None:
        """Close the broker."""
        await self.inner.close()

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish, counting new publications and timing the call."""
        started_s = time.perf_counter()
        result = await self.inner.publish(channel, data, key=key, info=info)
        self._metrics.publish_seconds.observe(time.perf_counter() - started_s)
        if not result.duplicate:
            self._metrics.publications += 1
        return result

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read history, timing the call."""
        started_s = time.perf_counter()
        read = await self.inner.history(channel, since, limit)
        self._metrics.history_read_seconds.observe(time.perf_counter() - started_s)
        return read

    async def subscribe(self, channel: ChannelName) -> None:
        """Subscribe the node to ``channel`` at the broker."""
        await self.inner.subscribe(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Unsubscribe the node from ``channel`` at the broker."""
        await self.inner.unsubscribe(channel)

    async def is_ready(self) -> bool:
        """Whether the broker is reachable."""
        return await self.inner.is_ready()
