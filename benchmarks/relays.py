"""Relay benchmark: an origin and two regions, with and without relays, in one run.

The set-up (docs/brokers/relay.md): one origin (``tidings serve``, memory broker);
two regions, each reaching the origin through a link of this benchmark's own (a TCP
proxy that delays every chunk 20 ms each way and counts the bytes it carries), each
with its clients next to it. Two layouts side by side:

* **relays**: each region runs a relay (``--broker relay+ws://<its link>``) and its
  clients connect to the relay: one copy of each publication crosses a region's link;
* **direct**: no relay; each region's clients connect to the origin through the
  region's link: one copy per client crosses it.

What it measures, per layout, while publishing at ``--rate`` to the origin:

* **delivery latency** at the clients, p50 and p99 (publish call to receipt, one
  clock), with the region's 20 ms one way in it;
* **bytes the origin sends per publication**, per region: what the link carried from
  the origin to the region, divided by the publications;
* **origin CPU per publication** (user + system time of its process);

and, for relays only, **recovery after a region's link is cut** for ``--cut-s`` (every
connection closed, new ones held, while publications go on): the time from the link's
return until every client of the region holds every publication, and whether any was
lost or repeated (the other region is not affected and is checked too).

``--scale 1000,3000`` adds 1 origin + 3 relays (no delay, no links: each relay connects
to the origin itself) with that many subscribers spread over the relays, against the
same subscribers on the origin directly: the origin's CPU per publication should stay
flat with relays as subscribers grow, and the p99 at the clients say what the relay
level adds. By default (``--scale-placement split``) every node runs on core 0 and the
load generator alone on core 1, in both layouts, so that a relay level is not measured
as a fight for cores; ``--scale-runs N`` repeats each cell, layouts alternating.

Run: ``.venv/bin/python benchmarks/relays.py`` (about a minute; the machine's other
load makes the figures indicative).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import uvloop

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loadgen
from benchmarks.report import markdown_table, percentile_ms, spread
from benchmarks.server_process import (
    ServerProcess,
    free_port,
    raise_open_files_limit,
    start_server,
    wait_healthy,
)

HOST: Final = "127.0.0.1"
CHANNEL: Final = "bench:relay"
CONFIG: Final = """
[namespaces.bench]
history_size = 10000
history_ttl = "10m"
"""
REGION_DELAY_S: Final = 0.02
DRAIN_TIMEOUT_S: Final = 60.0
CHUNK_BYTES: Final = 65_536
CORES: Final = len(os.sched_getaffinity(0))
SUBSCRIBE: Final = b'{"id":1,"op":"subscribe","channel":"%s"}' % CHANNEL.encode()


def wrap(data: bytes) -> bytes:
    """The ``/api/publish`` body of ``data``."""
    return b'{"channel":"%s","data":%s}' % (CHANNEL.encode(), data)


# -- a region's link -----------------------------------------------------------------------


class RegionLink:
    """A delaying, counting TCP proxy to the origin: each direction is a delay line (a
    chunk read at t is written at t + delay, whatever follows it), and the bytes going
    from the origin to the region are counted. ``cut`` closes every connection and holds
    new ones until ``restore``."""

    def __init__(self, target_port: int, delay_s: float) -> None:
        self._target_port = target_port
        self._delay_s = delay_s
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0
        self.bytes_to_region = 0

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._accept, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def cut(self) -> None:
        """Close every connection; hold new ones until ``restore``."""
        self._flowing.clear()
        writers, self._writers = list(self._writers), set()
        for writer in writers:
            writer.close()

    def restore(self) -> None:
        """Let connections flow again."""
        self._flowing.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(HOST, self._target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, target_writer))
        for source, sink, downstream in (
            (reader, target_writer, False),
            (target_reader, writer, True),
        ):
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
            for job in (self._read(source, queue), self._write(queue, sink, downstream)):
                task = asyncio.get_running_loop().create_task(job)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _read(
        self, source: asyncio.StreamReader, queue: asyncio.Queue[tuple[float, bytes]]
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await source.read(CHUNK_BYTES):
                queue.put_nowait((time.monotonic() + self._delay_s, chunk))
        queue.put_nowait((0.0, b""))

    async def _write(
        self,
        queue: asyncio.Queue[tuple[float, bytes]],
        sink: asyncio.StreamWriter,
        downstream: bool,
    ) -> None:
        try:
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                await self._flowing.wait()
                wait_s = due - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                if downstream:
                    self.bytes_to_region += len(chunk)
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError, RuntimeError):  # RuntimeError: closed by a cut
            pass
        finally:
            sink.close()


# -- nodes ---------------------------------------------------------------------------------


@dataclass
class Nodes:
    """What a layout runs: the origin, its regions' links, and where each region's
    clients connect (a relay's port, or the region's link to the origin)."""

    origin: ServerProcess
    links: list[RegionLink]
    relays: list[ServerProcess]
    client_ports: list[int]


def serve(name: str, directory: Path, cpu: int, broker: str | None = None) -> ServerProcess:
    port = free_port()
    config = directory / "tidings.toml"
    config.write_text(CONFIG)
    argv = [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--config", str(config)]
    argv += ["--log-level", "warning"]
    if broker is not None:
        argv += ["--broker", broker]
    return start_server(name, argv, port, directory / f"{name}.log", cpu)


@contextlib.asynccontextmanager
async def layout(
    directory: Path,
    *,
    regions: int,
    relays: bool,
    delay_s: float,
    proxied: bool = True,
    placement: str = "turns",
) -> AsyncIterator[Nodes]:
    """Start the origin, ``regions`` links to it and (with ``relays``) a relay per region.

    Without ``proxied`` there are no links: each relay connects to the origin itself
    (the links run in this process, the load generator's, and at thousands of clients
    its event loop made them a hop of their own: p99 99 ms through them, 42 ms
    without, at 3,000 subscribers). ``placement`` pins the relays (``PLACEMENTS``)."""
    origin = serve("origin", directory, cpu=0)
    links: list[RegionLink] = []
    started: list[ServerProcess] = []
    try:
        await wait_healthy(origin, "/ready")
        for index in range(regions):
            upstream = origin.port
            if proxied:
                link = RegionLink(origin.port, delay_s)
                await link.start()
                links.append(link)
                upstream = link.port
            if relays:
                place = directory / f"relay{index}"
                place.mkdir()
                relay = serve(
                    f"relay{index}",
                    place,
                    cpu=relay_core(placement, index),
                    broker=f"relay+ws://{HOST}:{upstream}",
                )
                started.append(relay)
                await wait_healthy(relay, "/ready")
        ports = [relay.port for relay in started] if relays else [link.port for link in links]
        yield Nodes(origin, links, started, ports)
    finally:
        for relay in started:
            relay.stop()
        for link in links:
            await link.close()
        origin.stop()


# Where --scale runs its relays; the origin is always on core 0.
PLACEMENTS: Final = {
    # Every node on core 0 and the load generator (this process) alone on core 1, in
    # both layouts: the servers get the same core with relays or without, so the
    # difference is the relay level's, not a contention for cores. The default.
    "split": "every node on core 0, the load generator on core 1",
    # Relays take turns over the cores, starting with the origin's other one; the load
    # generator shares them (three relays pinned to one core with the generator beside
    # them waited for each other: p99 121 ms at 1,000 subscribers, early measurements).
    "turns": "relays take turns over the cores; the load generator unpinned",
    # Every relay on core 1, the load generator unpinned.
    "one-core": "relays on core 1, the origin on core 0; the load generator unpinned",
}


def relay_core(placement: str, index: int) -> int:
    """The core the ``index``-th relay is pinned to under ``placement``."""
    if placement == "split":
        return 0
    if placement == "one-core":
        return 1 % CORES
    return (index + 1) % CORES


@contextlib.contextmanager
def generator_placed(placement: str) -> Iterator[None]:
    """Pin this process (the load generator) as ``placement`` says, for the block."""
    before = os.sched_getaffinity(0)
    if placement == "split" and CORES > 1:
        os.sched_setaffinity(0, {1})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


@dataclass
class Clients:
    """Subscribers of every region, each reporting to its region's collector."""

    collectors: list[loadgen.Collector]
    subscribers: list[list[loadgen.Subscriber]]

    def close(self) -> None:
        for region in self.subscribers:
            for subscriber in region:
                subscriber.close()


async def connect_clients(nodes: Nodes, per_region: int) -> Clients:
    collectors = [loadgen.Collector(per_region) for _ in nodes.client_ports]
    subscribers = [
        await loadgen.connect_subscribers(HOST, port, per_region, collector, subscribe=SUBSCRIBE)
        for port, collector in zip(nodes.client_ports, collectors, strict=True)
    ]
    return Clients(collectors, subscribers)


# -- phases --------------------------------------------------------------------------------


@dataclass
class Steady:
    """Figures of publishing at a steady rate."""

    p50_ms: float
    p99_ms: float
    bytes_per_publication: list[float]  # per region
    origin_cpu_ms: float  # per publication
    relay_cpu_ms: float  # per publication, per relay (0 without relays)
    missing: int
    duplicates: int


async def publish_and_collect(
    nodes: Nodes, clients: Clients, seqs: range, publish: Callable[[], Awaitable[None]]
) -> list[loadgen.Receipts]:
    receipts = []
    for collector, region in zip(clients.collectors, clients.subscribers, strict=True):
        collector.current = loadgen.Receipts(len(region), seqs.start, len(seqs))
        receipts.append(collector.current)
    await publish()
    for receipt in receipts:
        await receipt.wait_complete(DRAIN_TIMEOUT_S)
    return receipts


async def steady(nodes: Nodes, clients: Clients, seqs: range, rate: float) -> Steady:
    # A connection of its own: the native server closes one idle for 5 s, and waiting
    # for a slow phase's last deliveries may take longer.
    publisher = await loadgen.HttpPublisher.open(HOST, nodes.origin.port, "/api/publish")
    bytes_before = [link.bytes_to_region for link in nodes.links]
    cpu_before = nodes.origin.cpu_s()
    relays_before = [relay.cpu_s() for relay in nodes.relays]
    receipts = await publish_and_collect(
        nodes, clients, seqs, lambda: loadgen.publish_at_rate(publisher, wrap, seqs, rate)
    )
    await publisher.close()
    cpu_s = nodes.origin.cpu_s() - cpu_before
    relays_s = [
        relay.cpu_s() - before for relay, before in zip(nodes.relays, relays_before, strict=True)
    ]
    latencies = sorted(latency for receipt in receipts for latency in receipt.latencies_ns)
    return Steady(
        p50_ms=percentile_ms(latencies, 0.50),
        p99_ms=percentile_ms(latencies, 0.99),
        bytes_per_publication=[
            (link.bytes_to_region - before) / len(seqs)
            for link, before in zip(nodes.links, bytes_before, strict=True)
        ],
        origin_cpu_ms=1000 * cpu_s / len(seqs),
        relay_cpu_ms=1000 * sum(relays_s) / max(1, len(relays_s)) / len(seqs),
        missing=sum(receipt.missing for receipt in receipts),
        duplicates=sum(receipt.duplicates for receipt in receipts),
    )


@dataclass
class Recovery:
    """Figures of a region's link cut while publishing."""

    recovery_s: float  # from the link's return until the region's clients hold everything
    missing: int
    duplicates: int
    other_region_missing: int


async def cut_region(
    nodes: Nodes,
    clients: Clients,
    publisher: loadgen.HttpPublisher,
    rate: float,
    first_seq: int,
    *,
    cut_s: float,
) -> Recovery:
    """Publish at ``rate`` for 1 s, then for ``cut_s`` with region 0's link cut; restore
    the link once the last one is published, and time the region's catching up."""
    link = nodes.links[0]
    seqs = range(first_seq, first_seq + int(rate * (1 + cut_s)))

    async def publish() -> None:
        run = asyncio.create_task(loadgen.publish_at_rate(publisher, wrap, seqs, rate))
        await asyncio.sleep(1.0)
        link.cut()
        await run
        link.restore()
        restored_at.append(time.time_ns())

    restored_at: list[int] = []
    receipts = await publish_and_collect(nodes, clients, seqs, publish)
    cut, other = receipts[0], receipts[1]
    return Recovery(
        recovery_s=max(0, cut.last_ns - restored_at[0]) / 1e9,
        missing=cut.missing,
        duplicates=cut.duplicates,
        other_region_missing=other.missing,
    )


async def run_regions(options: argparse.Namespace, directory: Path) -> list[str]:
    lines: list[str] = []
    results: dict[str, Steady] = {}
    recovery: Recovery | None = None
    warmup = range(0, 50)
    measured = range(warmup.stop, warmup.stop + options.publications)
    for relays in (True, False):
        name = "relays" if relays else "direct"
        place = directory / name
        place.mkdir()
        async with layout(place, regions=2, relays=relays, delay_s=REGION_DELAY_S) as nodes:
            clients = await connect_clients(nodes, options.clients)
            try:
                await steady(nodes, clients, warmup, options.rate)
                results[name] = await steady(nodes, clients, measured, options.rate)
                if relays:
                    publisher = await loadgen.HttpPublisher.open(
                        HOST, nodes.origin.port, "/api/publish"
                    )
                    recovery = await cut_region(
                        nodes, clients, publisher, options.rate, measured.stop, cut_s=options.cut_s
                    )
                    await publisher.close()
            finally:
                clients.close()
    lines.append(
        f"Two regions, {options.clients} clients each, links delayed {REGION_DELAY_S * 1000:g} ms "
        f"each way; {options.publications} publications at {options.rate:g}/s to the origin."
    )
    lines.append("")
    rows = [
        [
            name,
            f"{figures.p50_ms:.1f}",
            f"{figures.p99_ms:.1f}",
            " / ".join(f"{value:,.0f}" for value in figures.bytes_per_publication),
            f"{figures.origin_cpu_ms:.2f}",
            f"{figures.relay_cpu_ms:.2f}" if figures.relay_cpu_ms else "-",
            f"{figures.missing} / {figures.duplicates}",
        ]
        for name, figures in results.items()
    ]
    lines.append(
        markdown_table(
            [
                "layout",
                "p50 ms",
                "p99 ms",
                "origin bytes per publication (region A / B)",
                "origin CPU ms per publication",
                "each relay's CPU ms per publication",
                "missing / repeated",
            ],
            rows,
        )
    )
    if recovery is not None:
        lines += [
            "",
            f"Region A's link cut for {options.cut_s:g} s while publishing at {options.rate:g}/s "
            f"({int(options.rate * options.cut_s)} publications made meanwhile): every client "
            f"of region A held every one {recovery.recovery_s:.2f} s after the link returned; "
            f"missing {recovery.missing}, repeated {recovery.duplicates}; "
            f"region B missing {recovery.other_region_missing}.",
        ]
    return lines


# -- scale: origin CPU as subscribers grow --------------------------------------------------


async def scale_once(
    directory: Path, subscribers: int, relays: int, options: argparse.Namespace
) -> Steady:
    """The figures of ``subscribers`` over ``relays`` relays (0: direct) on loopback: the
    origin's CPU per publication, and the latency at the clients (a relay level's cost
    is the difference between the two layouts, no delay being added)."""
    async with layout(
        directory,
        regions=max(relays, 1),
        relays=relays > 0,
        delay_s=0.0,
        proxied=False,
        placement=options.scale_placement,
    ) as nodes:
        ports = nodes.client_ports if relays else [nodes.origin.port]
        per_node = subscribers // len(ports)
        collectors = [loadgen.Collector(per_node) for _ in ports]
        clients = Clients(
            collectors,
            [
                await loadgen.connect_subscribers(
                    HOST, port, per_node, collector, subscribe=SUBSCRIBE
                )
                for port, collector in zip(ports, collectors, strict=True)
            ],
        )
        try:
            warmup = range(0, 20)
            measured = range(20, 20 + options.scale_publications)
            await steady(nodes, clients, warmup, options.scale_rate)
            figures = await steady(nodes, clients, measured, options.scale_rate)
        finally:
            clients.close()
        if figures.missing or figures.duplicates:
            print(
                f"warning: {figures.missing} deliveries missing, {figures.duplicates} repeated "
                f"({subscribers} subscribers, {relays} relays)"
            )
        return figures


SCALE_LAYOUTS: Final = {"relays": ("1 origin + 3 relays", 3), "direct": ("origin alone", 0)}


async def run_scale(options: argparse.Namespace, directory: Path) -> list[str]:
    """Each subscriber count in each layout, ``--scale-runs`` times, the layouts
    alternating within a round so that a change in the machine's load falls on both."""
    counts = [int(count) for count in options.scale.split(",")]
    names = options.scale_layouts.split(",")
    runs: dict[tuple[str, int], list[Steady]] = {(n, c): [] for n in names for c in counts}
    with generator_placed(options.scale_placement):
        for round_number in range(options.scale_runs):
            for count in counts:
                for name in names:
                    place = directory / f"scale-{name}-{count}-{round_number}"
                    place.mkdir()
                    relays = SCALE_LAYOUTS[name][1]
                    runs[name, count].append(await scale_once(place, count, relays, options))
    header = ["layout", *(f"{count:,} subscribers" for count in counts)]

    def rows(cell: Callable[[list[Steady]], str]) -> list[list[str]]:
        return [
            [SCALE_LAYOUTS[name][0], *(cell(runs[name, count]) for count in counts)]
            for name in names
        ]

    def cpu(figures: list[Steady]) -> str:
        origin = spread([f.origin_cpu_ms for f in figures], ".2f")
        if not figures[0].relay_cpu_ms:
            return origin
        return f"{origin}; each relay {spread([f.relay_cpu_ms for f in figures], '.2f')}"

    def latency(figures: list[Steady]) -> str:
        p50 = spread([f.p50_ms for f in figures], ".1f")
        return f"{p50} / {spread([f.p99_ms for f in figures], '.1f')}"

    def lost(figures: list[Steady]) -> str:
        return f"{sum(f.missing for f in figures)} / {sum(f.duplicates for f in figures)}"

    each = "median (least–most) of " if options.scale_runs > 1 else ""
    return [
        "",
        f"{options.scale_publications} publications at {options.scale_rate:g}/s, loopback, "
        f"no delay, {options.scale_runs} run(s) per cell, layouts alternating; placement "
        f"`{options.scale_placement}`: {PLACEMENTS[options.scale_placement]}.",
        "",
        f"CPU ms per publication, origin (and each relay), {each}the runs:",
        "",
        markdown_table(header, rows(cpu)),
        "",
        f"Delivery latency at the clients, p50 / p99 ms, {each}the runs (one relay level's "
        "cost is the difference between the rows):",
        "",
        markdown_table(header, rows(latency)),
        "",
        "Deliveries missing / repeated, all runs:",
        "",
        markdown_table(header, rows(lost)),
    ]


# -- levels: the latency one relay level adds, every level in one run ---------------------


@dataclass(frozen=True)
class FanOutTimings:
    """A node's fan-out figures so far, from its ``/metrics``: the sum of the times from
    each publication's timestamp at the origin (ms resolution: +0.5 ms on average) to
    this node's fan-out, and of the fan-outs' durations; a difference of two readings
    gives the means over the publications between them."""

    count: float
    publish_to_fan_out_s: float
    fan_out_s: float

    def __sub__(self, before: FanOutTimings) -> FanOutTimings:
        return FanOutTimings(
            self.count - before.count,
            self.publish_to_fan_out_s - before.publish_to_fan_out_s,
            self.fan_out_s - before.fan_out_s,
        )

    @property
    def publish_to_fan_out_ms(self) -> float:
        return 1000 * self.publish_to_fan_out_s / self.count if self.count else 0.0

    @property
    def fan_out_ms(self) -> float:
        return 1000 * self.fan_out_s / self.count if self.count else 0.0


async def fan_out_timings(server: ServerProcess) -> FanOutTimings:
    """Read ``server``'s fan-out histograms' sums and count."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"http://{HOST}:{server.port}/metrics")).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (
            "tidings_publish_to_fanout_seconds_sum",
            "tidings_fanout_seconds_sum",
            "tidings_fanout_seconds_count",
        ):
            values[name] = float(value)
    return FanOutTimings(
        values.get("tidings_fanout_seconds_count", 0.0),
        values.get("tidings_publish_to_fanout_seconds_sum", 0.0),
        values.get("tidings_fanout_seconds_sum", 0.0),
    )


async def start_levels(
    options: argparse.Namespace,
    directory: Path,
    levels: list[list[ServerProcess]],
    nodes: list[ServerProcess],
) -> None:
    """Start the origin and the relay levels into ``levels`` (and each into ``nodes``,
    so that the caller stops whatever started), the nodes taking turns over the cores."""
    for level in range(options.levels + 1):
        here: list[ServerProcess] = []
        for index in range(1 if level == 0 else options.relays_per_level):
            place = directory / f"level{level}-{index}"
            place.mkdir()
            upstream = None
            if level:
                above = levels[-1][index % len(levels[-1])]
                upstream = f"relay+ws://{HOST}:{above.port}"
            server = serve(place.name, place, cpu=len(nodes) % CORES, broker=upstream)
            nodes.append(server)
            here.append(server)
            await wait_healthy(server, "/ready")
        levels.append(here)


async def run_levels(options: argparse.Namespace, directory: Path) -> list[str]:
    """The origin and ``--levels`` relay levels below it (loopback, no delay), each level
    ``--relays-per-level`` relays of the level above (round robin), with
    ``--levels-clients`` subscribers at *every* node, the origin's included, all
    receiving the same publications at the same time: the latency at level n minus
    level n-1 is what one relay hop costs, under whatever load the machine has at that
    moment (rounds run minutes apart on this shared machine differ by more than a hop)."""
    count = options.levels_clients
    levels: list[list[ServerProcess]] = []
    generator_ms = 0.0
    nodes: list[ServerProcess] = []
    clients: Clients | None = None
    try:
        await start_levels(options, directory, levels, nodes)
        collectors = [loadgen.Collector(count) for _ in nodes]
        subscribers: list[list[loadgen.Subscriber]] = [[] for _ in nodes]
        clients = Clients(collectors, subscribers)
        # Shallow first: each relay follows the channel after its upstream's own clients
        # subscribed, so the upstream writes to the relay's link after them (the hub
        # fans out in subscription order); deep first puts each link before them.
        order = list(range(len(nodes)))
        for at in reversed(order) if options.deep_first else order:
            subscribers[at] = await loadgen.connect_subscribers(
                HOST, nodes[at].port, count, collectors[at], subscribe=SUBSCRIBE
            )
        chain = Nodes(nodes[0], [], nodes[1:], [server.port for server in nodes])
        rows = []
        for phase, seqs in (
            ("warm-up", range(0, 50)),
            ("measured", range(50, 50 + options.levels_publications)),
        ):
            publisher = await loadgen.HttpPublisher.open(HOST, chain.origin.port, "/api/publish")
            cpu_before = [server.cpu_s() for server in nodes]
            timings_before = [await fan_out_timings(server) for server in nodes]
            generator_before_s = time.process_time()
            run = functools.partial(
                loadgen.publish_at_rate, publisher, wrap, seqs, options.levels_rate
            )
            receipts = await publish_and_collect(chain, clients, seqs, run)
            await publisher.close()
            if phase == "warm-up":
                continue
            generator_ms = 1000 * (time.process_time() - generator_before_s) / len(seqs)
            timings = [
                (await fan_out_timings(server)) - before
                for server, before in zip(nodes, timings_before, strict=True)
            ]
            at = 0
            for level, here in enumerate(levels):
                mine = receipts[at : at + len(here)]
                cpu_s = sum(server.cpu_s() - cpu_before[at + i] for i, server in enumerate(here))
                waited = sum(t.publish_to_fan_out_ms for t in timings[at : at + len(here)])
                took = sum(t.fan_out_ms for t in timings[at : at + len(here)])
                at += len(here)
                latencies = sorted(latency for receipt in mine for latency in receipt.latencies_ns)
                rows.append(
                    [
                        "origin" if level == 0 else f"relay level {level} ({len(here)})",
                        f"{percentile_ms(latencies, 0.50):.1f}",
                        f"{percentile_ms(latencies, 0.99):.1f}",
                        f"{1000 * cpu_s / len(here) / len(seqs):.2f}",
                        f"{waited / len(here):.1f}",
                        f"{took / len(here):.2f}",
                        f"{sum(r.missing for r in mine)} / {sum(r.duplicates for r in mine)}",
                    ]
                )
    finally:
        if clients is not None:
            clients.close()
        for server in reversed(nodes):
            server.stop()
    first = "deepest" if options.deep_first else "shallowest"
    return [
        "",
        f"The origin and {options.levels} relay level(s) of {options.relays_per_level} below "
        f"it, loopback, {count:,} subscribers at every node, {options.levels_publications} "
        f"publications at {options.levels_rate:g}/s, every level in the same run (the {first} "
        "level's clients subscribed first):",
        "",
        markdown_table(
            [
                "clients at",
                "p50 ms",
                "p99 ms",
                "CPU ms per publication, per node",
                "mean ms from the origin's publish to the node's fan-out",
                "mean fan-out ms",
                "missing / repeated",
            ],
            rows,
        ),
        "",
        f"The load generator (every client, one process) used {generator_ms:.2f} ms of CPU "
        "per publication.",
    ]


async def main(options: argparse.Namespace) -> None:
    raise_open_files_limit()
    with tempfile.TemporaryDirectory(prefix="tidings-relays-") as temporary:
        directory = Path(temporary)
        lines = [] if options.only_scale else await run_regions(options, directory)
        if options.scale:
            lines += await run_scale(options, directory)
        if options.levels:
            lines += await run_levels(options, directory)
    print("\n".join(lines))


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100, help="clients per region")
    parser.add_argument("--rate", type=float, default=100.0, help="publications per second")
    parser.add_argument("--publications", type=int, default=500)
    parser.add_argument("--cut-s", type=float, default=10.0, help="how long region A's link is cut")
    parser.add_argument("--scale", default="", help="subscriber counts, e.g. 1000,3000")
    parser.add_argument("--scale-rate", type=float, default=20.0)
    parser.add_argument("--scale-publications", type=int, default=200)
    parser.add_argument(
        "--scale-layouts", default="relays,direct", help="of --scale: relays, direct or both"
    )
    parser.add_argument(
        "--scale-placement",
        choices=sorted(PLACEMENTS),
        default="split",
        help="where --scale's nodes and load generator run: "
        + "; ".join(f"{name}: {what}" for name, what in PLACEMENTS.items()),
    )
    parser.add_argument("--scale-runs", type=int, default=1, help="runs per --scale cell")
    parser.add_argument("--only-scale", action="store_true", help="skip the regions")
    parser.add_argument(
        "--levels", type=int, default=0, help="relay levels chained after the origin (e.g. 2)"
    )
    parser.add_argument(
        "--deep-first",
        action="store_true",
        help="subscribe the deepest level's clients first (each relay's link first upstream)",
    )
    parser.add_argument("--relays-per-level", type=int, default=1)
    parser.add_argument("--levels-clients", type=int, default=333, help="subscribers per node")
    parser.add_argument("--levels-rate", type=float, default=50.0)
    parser.add_argument("--levels-publications", type=int, default=500)
    return parser.parse_args()


if __name__ == "__main__":
    uvloop.run(main(parse_options()))
