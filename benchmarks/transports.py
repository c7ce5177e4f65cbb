"""Transport comparison: WebSocket, SSE, long polling and short polling on one workload.

What it measures: one tidings server (memory broker) pinned to CPU 0, one channel,
``--clients`` clients of one transport at a time, publications made through
``POST /api/publish`` at ``--rate`` per second for ``--duration`` seconds. Each
transport is one phase against the same server process: connect the clients, warm up
(not reported), measure, close the clients. Per transport it reports deliveries per
second, delivery latency (p50, p99), the server's CPU time per delivery, the bytes the
clients read and wrote on their sockets per delivery, and the deliveries that never
arrived.

Why: the four transports pay differently for the same publication (a frame, an event,
a whole HTTP exchange per wake-up, or a request per interval whether anything happened
or not); DESIGN.md asks that such claims be figures measured side by side in one run.

The clients are those of ``clients.py``, hand-written like ``loadgen.py``'s: the
WebSocket one is ``loadgen.Subscriber`` counting what it reads; SSE is a bare ``asyncio.Protocol``
reading the ``text/event-stream``; the pollers speak HTTP/1.1 on one keep-alive
connection each. Every client counts the bytes it reads and writes on its socket
(HTTP and WebSocket framing included; TCP/IP headers not).

Run: ``.venv/bin/python benchmarks/transports.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import uvloop

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import clients, fanout, loadgen, report
from benchmarks.server_process import (
    ServerProcess,
    free_port,
    prepare_generator,
    start_server,
    wait_healthy,
)

HOST: Final = fanout.HOST
SERVER_CPU: Final = fanout.SERVER_CPU
GENERATOR_CPU: Final = fanout.GENERATOR_CPU
BENCHMARKS_DIR: Final = Path(__file__).resolve().parent
HEADING: Final = "# Transport comparison"
TRANSPORTS: Final = ("websocket", "sse", "long-poll", "short-poll")
HISTORY_SIZE: Final = 100  # tidings' default history per channel: what a poll can catch up on
CONNECT_TIMEOUT_S: Final = 60.0
CONNECT_CONCURRENCY: Final = 50


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    clients: int
    rate: float
    duration_s: float
    warmup_s: float
    short_poll_interval_s: float
    long_poll_wait_s: int
    drain_timeout_s: float
    transports: tuple[str, ...]
    results: Path | None

    @property
    def publications(self) -> int:
        """Publications of each measured phase."""
        return max(1, round(self.rate * self.duration_s))

    @property
    def warmup(self) -> int:
        """Unmeasured publications before each measured phase."""
        return round(self.rate * self.warmup_s)


@dataclass(frozen=True, slots=True)
class TransportFigures:
    """One transport's measured phase: the fan-out figures plus the bytes on the wire."""

    figures: report.PhaseFigures
    read_bytes: int
    written_bytes: int

    @property
    def wire_bytes_per_delivery(self) -> float:
        """Bytes read and written by the clients, per delivery."""
        return (self.read_bytes + self.written_bytes) / max(self.figures.deliveries, 1)

    @property
    def request_bytes_per_delivery(self) -> float:
        """Bytes the clients wrote (requests, pongs), per delivery."""
        return self.written_bytes / max(self.figures.deliveries, 1)


def opener(transport: str, options: Options) -> clients.Opener:
    """How to open one client of ``transport`` (``clients.py`` has them all)."""
    if transport == "websocket":
        return clients.websocket()
    if transport == "sse":
        return clients.sse(f"/sse?channel={loadgen.CHANNEL}", b"event: subscribed")
    if transport == "long-poll":
        return clients.tidings_poll(options.long_poll_wait_s)
    # Short pollers' schedules are spread evenly over the interval.
    return clients.tidings_poll(0, options.short_poll_interval_s, options.clients)


# -- phases --------------------------------------------------------------------------------


async def run_transport(
    transport: str,
    server: ServerProcess,
    publisher: loadgen.HttpPublisher,
    options: Options,
    first_seq: int,
) -> TransportFigures:
    """Connect the clients of ``transport``, warm up, measure one phase, close them."""
    collector = loadgen.Collector(options.clients)
    wire = clients.Wire()
    opened = await clients.open_clients(
        opener(transport, options),
        server.port,
        range(options.clients),
        collector,
        wire,
        concurrency=CONNECT_CONCURRENCY,
        timeout_s=CONNECT_TIMEOUT_S,
    )
    wrap = fanout.TARGETS["tidings"].wrap

    def at_rate(seqs: range) -> Callable[[], Awaitable[None]]:
        return lambda: loadgen.publish_at_rate(publisher, wrap, seqs, options.rate)

    try:
        warmup = range(first_seq, first_seq + options.warmup)
        receipts = loadgen.Receipts(options.clients, warmup.start, len(warmup))
        await fanout.measure(server, collector, receipts, at_rate(warmup), options.drain_timeout_s)
        measured = range(warmup.stop, warmup.stop + options.publications)
        receipts = loadgen.Receipts(options.clients, measured.start, len(measured))
        read, written = wire.read, wire.written
        figures = await fanout.measure(
            server, collector, receipts, at_rate(measured), options.drain_timeout_s
        )
        return TransportFigures(figures, wire.read - read, wire.written - written)
    finally:
        await clients.close_clients(opened.clients)


async def benchmark(options: Options) -> dict[str, TransportFigures]:
    """Start one server; run each transport's phase against it in turn; stop it."""
    results: dict[str, TransportFigures] = {}
    with tempfile.TemporaryDirectory(prefix="tidings-transports-") as log_dir:
        port = free_port()
        argv = fanout.TARGETS["tidings"].argv(port)
        server = start_server("tidings", argv, port, Path(log_dir) / "tidings.log", SERVER_CPU)
        try:
            await wait_healthy(server, "/health")
            publisher = await loadgen.HttpPublisher.open(HOST, port, "/api/publish")
            seq = 0
            for transport in options.transports:
                measured = await run_transport(transport, server, publisher, options, seq)
                seq += options.warmup + options.publications
                results[transport] = measured
                _print_progress(transport, measured)
                await asyncio.sleep(0.5)  # let the server finish closing the clients
            await publisher.close()
        finally:
            server.stop()
    return results


def _print_progress(transport: str, measured: TransportFigures) -> None:
    figures = measured.figures
    print(
        f"{transport:10} {figures.deliveries_per_s:8,.0f} deliveries/s"
        f"  p50 {figures.p50_ms:8.2f} ms  p99 {figures.p99_ms:8.2f} ms"
        f"  {figures.server_cpu_us_per_delivery:7.1f} µs/delivery"
        f"  {measured.wire_bytes_per_delivery:7.0f} B/delivery"
        f"  server {figures.server_cpu_pct:3.0f}%  generator {figures.generator_cpu_pct:3.0f}%"
        f"  missing {figures.missing:,}",
        flush=True,
    )


# -- report --------------------------------------------------------------------------------


def figures_table(results: dict[str, TransportFigures]) -> str:
    """One row per transport: the figures of its measured phase."""
    titles = [
        "transport",
        "deliveries/s",
        "latency p50 ms",
        "latency p99 ms",
        "server CPU µs/delivery",
        "wire bytes/delivery",
        "of which client→server",
        "missing",
    ]
    rows = []
    for transport, measured in results.items():
        f = measured.figures
        cells = [
            transport,
            f"{f.deliveries_per_s:,.0f}",
            f"{f.p50_ms:.2f}",
            f"{f.p99_ms:.2f}",
            f"{f.server_cpu_us_per_delivery:.1f}",
            f"{measured.wire_bytes_per_delivery:,.0f}",
            f"{measured.request_bytes_per_delivery:,.0f}",
            f"{f.missing:,} of {f.expected:,}",
        ]
        rows.append(cells)
    return report.markdown_table(titles, rows)


def conditions_table(results: dict[str, TransportFigures]) -> str:
    """``report.CONDITIONS`` per transport (publication rate, CPU shares, other load)."""
    nested: report.Results = {"tidings": {t: [m.figures] for t, m in results.items()}}
    return report.table(nested, report.CONDITIONS, with_missing=False, phase_title="transport")


def notes(results: dict[str, TransportFigures]) -> list[str]:
    """``report.warnings`` for each transport's phase."""
    return report.warnings({"tidings": {t: [m.figures] for t, m in results.items()}})


def section(
    options: Options,
    results: dict[str, TransportFigures],
    found: list[str],
    environment: list[tuple[str, str]],
) -> str:
    """The ``# Transport comparison`` section of RESULTS.md."""
    described = "; ".join(f"{name}: {value}" for name, value in environment)
    noted = "\n".join(f"- {note}" for note in found) or "- none"
    return (
        f"{HEADING}\n\n"
        "Written by `benchmarks/transports.py`; README.md says what each figure means. "
        "One run; each row is one phase against the same server process.\n\n"
        f"{report.provenance()}\n\n"
        f"Machine: {described}.\n\n"
        f"Workload: one channel, {options.clients:,} clients per transport, "
        f"{options.publications:,} publications at {options.rate:g}/s after "
        f"{options.warmup:,} unmeasured ones, ~{loadgen.PAYLOAD_BYTES}-byte data; long "
        f"polls `wait={options.long_poll_wait_s}`, short polls `wait=0` every "
        f"{options.short_poll_interval_s:g} s per client (with `If-None-Match`). "
        f"Server on CPU {SERVER_CPU}, generator on CPU {GENERATOR_CPU}, loopback.\n\n"
        f"{figures_table(results)}\n\n## Conditions (transports)\n\n"
        f"{conditions_table(results)}\n\n## Warnings (transports)\n\n{noted}\n"
    )


def parse_options(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--clients", type=int, default=200, help="clients per transport (default 200)")
    add("--rate", type=float, default=10.0, help="publications per second (default 10)")
    add("--duration", type=float, default=10.0, help="s of measured publishing (default 10)")
    add("--warmup", type=float, default=2.0, help="s of unmeasured publishing first (default 2)")
    add("--short-poll-interval", type=float, default=1.0, help="s between short polls")
    add("--long-poll-wait", type=int, default=25, help="wait= of the long polls (default 25)")
    add("--drain-timeout", type=float, default=10.0, help="s to wait for late deliveries")
    add("--transports", default=",".join(TRANSPORTS), help="comma-separated subset")
    add("--results", default=str(BENCHMARKS_DIR / "RESULTS.md"), help="'-' to skip writing")
    args = parser.parse_args(argv)
    transports = tuple(name.strip() for name in args.transports.split(",") if name.strip())
    if not transports or set(transports) - set(TRANSPORTS):
        parser.error(f"--transports takes {', '.join(TRANSPORTS)}; got {args.transports!r}")
    if args.clients < 1 or args.rate <= 0 or args.duration <= 0 or args.short_poll_interval <= 0:
        parser.error("--clients, --rate, --duration and --short-poll-interval must be positive")
    if args.rate * args.short_poll_interval > HISTORY_SIZE:
        parser.error(f"a short poll would miss publications: rate × interval > {HISTORY_SIZE}")
    return Options(
        clients=args.clients,
        rate=args.rate,
        duration_s=args.duration,
        warmup_s=args.warmup,
        short_poll_interval_s=args.short_poll_interval,
        long_poll_wait_s=args.long_poll_wait,
        drain_timeout_s=args.drain_timeout,
        transports=transports,
        results=None if args.results == "-" else Path(args.results),
    )


def main() -> None:
    """Run every transport's phase, print the tables, write the section of RESULTS.md."""
    options = parse_options()
    prepare_generator(GENERATOR_CPU)
    environment = report.machine()  # before the load, so the load average is the machine's
    results = uvloop.run(benchmark(options))
    found = notes(results)
    print(f"\n{figures_table(results)}\n\n{conditions_table(results)}\n")
    text = section(options, results, found, environment)
    report.warn_and_write(found, options.results, HEADING, text)


if __name__ == "__main__":
    main()
