"""The workloads of the side-by-side comparison, each run once against one fresh server.

I/O: every workload drives a running server (``ServerProcess``) from this process, over
loopback, and reads the server's CPU time and memory from ``/proc``; the short-poll
one runs ``wrk``. A workload returns the figures of its one run; ``compare.py`` starts
the servers, repeats the runs and reports them.

- ``fan_out`` (``websocket``, ``sse``, ``long-poll``): subscribers of one channel,
  publications through the server's HTTP API at a fixed rate; after an unmeasured
  warm-up, the window from the first measured publication to its last delivery
  (``fanout.measure``): deliveries, latency, CPU per delivery.
- ``short_poll``: ``wrk`` on keep-alive connections asking again and again for a
  position that has nothing new; each answer is ``304 Not Modified``.
- ``idle``: WebSocket connections that do nothing once subscribed: the server's RSS
  with one open, then with ``idle_connections`` more, then whether it holds
  ``hold_connections`` in all.
- ``publishing`` (``publish``, ``publish-batch``): the server API alone, no
  subscribers: pipelined requests on a few keep-alive connections, each one
  publication (``POST /api/publish``) or one into each of ``publish_batch`` channels
  (``POST /api/broadcast``, the batched form of docs/protocol.md §6).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

import httpx
from benchmarks import clients, fanout, loadgen, report, wrk
from benchmarks.server_process import CpuReading, ServerProcess

HOST: Final = fanout.HOST
SERVER_CPU: Final = fanout.SERVER_CPU
GENERATOR_CPU: Final = fanout.GENERATOR_CPU
FAN_OUT: Final = ("websocket", "sse", "long-poll")
PUBLISHING: Final = ("publish", "publish-batch")
WORKLOADS: Final = (*FAN_OUT, "short-poll", "idle", *PUBLISHING)
CONNECT_TIMEOUT_S: Final = 120.0
IDLE_CONNECT_TIMEOUT_S: Final = 300.0
SETTLE_S: Final = 2.0  # after connecting, before reading RSS: let the server finish


@dataclass(frozen=True, slots=True)
class PollRequest:
    """The short poll wrk repeats: a path and the headers that make its answer a 304."""

    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """The request a publishing workload pipelines, and how many publications it makes."""

    path: str
    body: bytes
    publications: int


@dataclass(frozen=True, slots=True)
class Contender:
    """A server under test: how to start it and how each workload reaches it.

    ``subscribers`` maps each fan-out workload it takes part in to how its clients
    connect (``idle`` uses the ``websocket`` one); ``short_poll`` primes the short-poll
    workload and gives the request to repeat; ``publishes`` says it takes part in the
    ``publish`` workload; ``broadcast`` checks once that one request publishes the data
    into each of the channels and gives that request (``publish-batch``).
    """

    name: str
    launch: Callable[[int, Path], ServerProcess]
    health_path: str
    publish_path: str
    wrap: loadgen.Wrap
    count_path: str
    count_of: Callable[[httpx.Response], int]
    subscribers: Mapping[str, clients.Opener]
    short_poll: Callable[[int], Awaitable[PollRequest]] | None = None
    publishes: bool = False
    broadcast: Callable[[int, Sequence[str], bytes], Awaitable[PublishRequest]] | None = None

    def takes_part_in(self, workload: str) -> bool:
        """Whether this server runs ``workload``."""
        if workload == "short-poll":
            return self.short_poll is not None
        if workload == "publish":
            return self.publishes
        if workload == "publish-batch":
            return self.broadcast is not None
        if workload == "idle":
            return "websocket" in self.subscribers
        return workload in self.subscribers


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big and long each workload is (the command line's figures)."""

    subscribers: int = 1000
    rate: float = 50.0
    long_poll_subscribers: int = 500
    long_poll_rate: float = 10.0
    duration_s: float = 10.0
    warmup_s: float = 2.0
    drain_timeout_s: float = 10.0
    wrk_connections: int = 50
    wrk_duration_s: int = 10
    idle_connections: int = 10_000
    hold_connections: int = 15_000
    publish_connections: int = 4
    publish_depth: int = 64
    publish_duration_s: float = 5.0
    publish_batch: int = 100


# -- figures -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShortPollFigures:
    """One wrk run against one server."""

    requests_per_s: float
    server_cpu_us_per_request: float
    p50_ms: float
    p99_ms: float
    generator_cpu_us_per_request: float
    server_cpu_pct: float
    generator_cpu_pct: float
    server_core_other_pct: float
    errors: int


@dataclass(frozen=True, slots=True)
class IdleFigures:
    """The server's memory with idle connections, and how many it held."""

    rss_before_bytes: int
    rss_after_bytes: int
    added: int  # connections opened between the two readings, as the server counted them
    open_s: float
    held: int
    target: int
    rss_held_bytes: int

    @property
    def bytes_per_connection(self) -> float:
        """(RSS after − RSS before) / connections added."""
        return (self.rss_after_bytes - self.rss_before_bytes) / max(self.added, 1)


@dataclass(frozen=True, slots=True)
class PublishFigures:
    """One run of pipelined publishing (per publication: per request / ``batch``)."""

    batch: int  # publications per request: 1 for ``publish``
    publications_per_s: float
    server_cpu_us_per_publication: float
    generator_cpu_us_per_publication: float
    server_cpu_pct: float
    generator_cpu_pct: float
    server_core_other_pct: float
    publications: int  # of the answers that were 2xx
    failed: int  # answers (requests) that were not 2xx


# -- fan-out -------------------------------------------------------------------------------


async def fan_out(
    contender: Contender, workload: str, server: ServerProcess, sizes: Sizes
) -> report.PhaseFigures:
    """Subscribers of ``workload``, publications at a rate: one measured window."""
    long_poll = workload == "long-poll"
    count = sizes.long_poll_subscribers if long_poll else sizes.subscribers
    rate = sizes.long_poll_rate if long_poll else sizes.rate
    collector = loadgen.Collector(count)
    opened = await clients.open_clients(
        contender.subscribers[workload],
        server.port,
        range(count),
        collector,
        clients.Wire(),
        timeout_s=CONNECT_TIMEOUT_S,
    )
    try:
        if not long_poll:  # a long poller is counted only while its request waits
            await fanout.wait_subscribed(contender, server.port, count)
        publisher = await loadgen.HttpPublisher.open(HOST, server.port, contender.publish_path)

        async def window(seqs: range) -> report.PhaseFigures:
            receipts = loadgen.Receipts(count, seqs.start, len(seqs))

            async def publish() -> None:
                await loadgen.publish_at_rate(publisher, contender.wrap, seqs, rate)

            return await fanout.measure(server, collector, receipts, publish, sizes.drain_timeout_s)

        try:
            warmup = range(round(rate * sizes.warmup_s))
            await window(warmup)  # not reported: first publications and connections cost more
            return await window(
                range(warmup.stop, warmup.stop + max(1, round(rate * sizes.duration_s)))
            )
        finally:
            await publisher.close()
    finally:
        await clients.close_clients(opened.clients)


# -- short poll ----------------------------------------------------------------------------


async def tidings_short_poll(port: int) -> PollRequest:
    """Publish once, take the channel's cursor: ``GET /poll`` at it with ``If-None-Match``."""
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as http:
        published = await http.post(
            "/api/publish", json={"channel": loadgen.CHANNEL, "data": {"primed": True}}
        )
        published.raise_for_status()
        answer = await http.get("/poll", params={"channel": loadgen.CHANNEL})
        answer.raise_for_status()
        cursor = quote(answer.json()["cursor"])
        return PollRequest(
            f"/poll?channel={loadgen.CHANNEL}&cursor={cursor}",
            {"If-None-Match": answer.headers["etag"]},
        )


async def nchan_short_poll(port: int) -> PollRequest:
    """Publish once, read it with an interval poll: its position as the two headers."""
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as http:
        (await http.post("/pub", content=b'{"primed":true}')).raise_for_status()
        answer = await http.get("/poll")
        answer.raise_for_status()
        return PollRequest(
            "/poll",
            {
                "If-Modified-Since": answer.headers["last-modified"],
                "If-None-Match": answer.headers["etag"],
            },
        )


async def short_poll(contender: Contender, server: ServerProcess, sizes: Sizes) -> ShortPollFigures:
    """wrk repeating a short poll that has nothing new; checked to answer 304 first."""
    assert contender.short_poll is not None
    request = await contender.short_poll(server.port)
    url = f"http://{HOST}:{server.port}{request.path}"
    async with httpx.AsyncClient() as http:
        check = await http.get(url, headers=dict(request.headers))
    if check.status_code != 304:
        raise RuntimeError(
            f"{contender.name}: the short poll answered {check.status_code}, not 304"
        )
    start = CpuReading.take(server.pid, SERVER_CPU, GENERATOR_CPU)
    ran = await asyncio.to_thread(
        wrk.run,
        url,
        request.headers,
        connections=sizes.wrk_connections,
        duration_s=sizes.wrk_duration_s,
        cpu=GENERATOR_CPU,
    )
    used = CpuReading.take(server.pid, SERVER_CPU, GENERATOR_CPU) - start
    requests = max(ran.requests, 1)
    return ShortPollFigures(
        requests_per_s=ran.requests_per_s,
        server_cpu_us_per_request=used.server_s * 1e6 / requests,
        p50_ms=ran.p50_ms,
        p99_ms=ran.p99_ms,
        generator_cpu_us_per_request=ran.cpu_s * 1e6 / requests,
        server_cpu_pct=used.percent(used.server_s),
        generator_cpu_pct=used.percent(ran.cpu_s),
        server_core_other_pct=used.others_pct(used.server_core_s, used.server_s),
        errors=ran.errors,
    )


# -- idle connections ----------------------------------------------------------------------


async def idle(contender: Contender, server: ServerProcess, sizes: Sizes) -> IdleFigures:
    """RSS with 1 idle WebSocket, then with ``idle_connections`` more; then the hold test.

    The first connection is there so that what the server allocates once, on its
    first WebSocket (lazy imports, buffers), is not charged to the others.
    """
    opener = contender.subscribers["websocket"]
    collector = loadgen.Collector(sizes.hold_connections)
    wire = clients.Wire()
    opened: list[clients.Client] = []

    async def open_up_to(total: int) -> int:
        batch = await clients.open_clients(
            opener,
            server.port,
            range(len(opened), total),
            collector,
            wire,
            timeout_s=IDLE_CONNECT_TIMEOUT_S,
            tolerate_failures=True,
        )
        opened.extend(batch.clients)
        counted = await fanout.wait_subscribed(
            contender, server.port, total - batch.failures, timeout_s=30.0, strict=False
        )
        await asyncio.sleep(SETTLE_S)
        return counted

    try:
        first = await open_up_to(1)
        rss_before = server.rss_bytes()
        started_s = time.monotonic()
        after = await open_up_to(1 + sizes.idle_connections)
        open_s = time.monotonic() - started_s - SETTLE_S
        rss_after = server.rss_bytes()
        await open_up_to(sizes.hold_connections)
        counted = await fanout.wait_subscribed(
            contender, server.port, sizes.hold_connections, timeout_s=0.0, strict=False
        )
        still_open = sum(1 for client in opened if client.is_open)
        return IdleFigures(
            rss_before_bytes=rss_before,
            rss_after_bytes=rss_after,
            added=after - first,
            open_s=open_s,
            held=min(counted, still_open),
            target=sizes.hold_connections,
            rss_held_bytes=server.rss_bytes(),
        )
    finally:
        await clients.close_clients(opened)


# -- publishing ----------------------------------------------------------------------------


async def tidings_broadcast(port: int, channels: Sequence[str], data: bytes) -> PublishRequest:
    """``POST /api/broadcast`` of ``data`` into ``channels``, checked to answer one result each."""
    body = b'{"channels":%s,"data":%s}' % (
        json.dumps(list(channels), separators=(",", ":")).encode(),
        data,
    )
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{port}") as http:
        answer = await http.post(
            "/api/broadcast", content=body, headers={"Content-Type": "application/json"}
        )
    answer.raise_for_status()
    results = len(answer.json()["results"])
    if results != len(channels):
        raise RuntimeError(
            f"/api/broadcast answered {results} results for {len(channels)} channels"
        )
    return PublishRequest("/api/broadcast", body, len(channels))


async def publish_request(
    contender: Contender, workload: str, port: int, sizes: Sizes
) -> PublishRequest:
    """What ``workload`` pipelines: one publication, or one into each of ``publish_batch``."""
    data = loadgen.stamped_data(0)
    if workload == "publish":
        return PublishRequest(contender.publish_path, contender.wrap(data), 1)
    assert contender.broadcast is not None
    channels = [f"{loadgen.CHANNEL}-{index}" for index in range(sizes.publish_batch)]
    return await contender.broadcast(port, channels, data)


async def publishing(
    contender: Contender, workload: str, server: ServerProcess, sizes: Sizes
) -> PublishFigures:
    """Pipelined requests of ``workload`` on ``publish_connections`` connections.

    An unmeasured warm-up first. Each 2xx answer counts as the request's publications,
    and the CPU figures are per publication.
    """
    request = await publish_request(contender, workload, server.port, sizes)
    await _publish_for(server, request, sizes, sizes.warmup_s)
    start = CpuReading.take(server.pid, SERVER_CPU, GENERATOR_CPU)
    start_ns = time.time_ns()
    posters = await _publish_for(server, request, sizes, sizes.publish_duration_s)
    used = CpuReading.take(server.pid, SERVER_CPU, GENERATOR_CPU) - start
    failed = sum(poster.failed for poster in posters)
    published = (sum(poster.answered for poster in posters) - failed) * request.publications
    window_s = max(max(poster.last_ns for poster in posters) - start_ns, 1) / 1e9
    count = max(published, 1)
    return PublishFigures(
        batch=request.publications,
        publications_per_s=published / window_s,
        server_cpu_us_per_publication=used.server_s * 1e6 / count,
        generator_cpu_us_per_publication=used.generator_s * 1e6 / count,
        server_cpu_pct=used.percent(used.server_s),
        generator_cpu_pct=used.percent(used.generator_s),
        server_core_other_pct=used.others_pct(used.server_core_s, used.server_s),
        publications=published,
        failed=failed,
    )


async def _publish_for(
    server: ServerProcess, request: PublishRequest, sizes: Sizes, duration_s: float
) -> list[loadgen.PipelinedPoster]:
    posters = [
        await loadgen.PipelinedPoster.open(
            HOST, server.port, request.path, request.body, sizes.publish_depth
        )
        for _ in range(sizes.publish_connections)
    ]
    try:
        for poster in posters:
            poster.start()
        await asyncio.sleep(duration_s)
        for poster in posters:
            poster.stop()
        async with asyncio.timeout(30.0):
            await asyncio.gather(*(poster.done for poster in posters))
    finally:
        for poster in posters:
            poster.close()
    return posters
