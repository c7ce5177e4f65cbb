"""Fan-out benchmark: tidings against a naive Starlette fan-out, side by side in one run.

What it measures: one channel, ``--subscribers`` WebSocket subscribers, publications
made through each server's HTTP API. Per server and phase it reports deliveries per
second, delivery latency (p50, p99), the server's CPU time per delivery, and whether
every subscriber received every publication. Phases: ``rate`` (``--publications`` at
``--rate`` per second: latency at a steady load) and ``burst`` (``--burst``
publications back to back: the most the server can deliver).

Why: DESIGN.md asks every claim about speed to be a figure measured side by side with
an alternative in the same run. The alternative is the fan-out loop most people would
write first (naive_server.py), on the same uvicorn settings, so the difference is what
tidings' hub, outbound queues and protocol cost or save. Each server runs alone on CPU
0 and the generator alone on CPU 1; runs alternate between the servers so drift in the
machine's load is shared.

Run: ``.venv/bin/python benchmarks/fanout.py`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import httpx
import uvloop

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loadgen, report
from benchmarks.server_process import (
    CpuReading,
    ServerProcess,
    core_busy_s,
    free_port,
    prepare_generator,
    start_server,
    wait_healthy,
)

HOST: Final = "127.0.0.1"
SERVER_CPU: Final = 0
GENERATOR_CPU: Final = 1
BENCHMARKS_DIR: Final = Path(__file__).resolve().parent
SUBSCRIBED_TIMEOUT_S: Final = 30.0
PROFILER_ATTACH_S: Final = 1.0
RESULTS_HEADING: Final = "# Fan-out benchmark results"
QUIET_SAMPLE_S: Final = 1.0
QUIET_BUSY_PCT: Final = 10.0


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    subscribers: int
    publications: int
    rate: float
    burst: int
    warmup: int
    runs: int
    drain_timeout_s: float
    quiet_wait_s: float
    servers: tuple[str, ...]
    results: Path | None
    py_spy: Path | None


@dataclass(frozen=True, slots=True)
class Target:
    """A server under test: how to start it, publish to it, subscribe and count."""

    name: str
    argv: Callable[[int], list[str]]
    health_path: str
    publish_path: str
    wrap: loadgen.Wrap
    subscribe: bytes | None
    count_path: str
    count_of: Callable[[httpx.Response], int]


class Counting(Protocol):
    """What ``wait_subscribed`` needs of a server under test: where it counts subscribers."""

    @property
    def name(self) -> str:
        """The server's name in messages."""

    @property
    def count_path(self) -> str:
        """Where it answers how many subscribers it has."""

    @property
    def count_of(self) -> Callable[[httpx.Response], int]:
        """How to read the count from that answer."""


def _tidings_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "tidings", "serve", "--port", str(port), "--log-level", "warning"]


def _naive_argv(port: int) -> list[str]:
    script = str(BENCHMARKS_DIR / "naive_server.py")
    return [sys.executable, script, "--port", str(port), "--log-level", "warning"]


def tidings_subscribers(body: Any) -> int:
    """The channel's subscribers in tidings' ``GET /api/channels`` answer."""
    return int(body["channels"].get(loadgen.CHANNEL, {}).get("subscribers", 0))


TARGETS: Final = {
    "tidings": Target(
        name="tidings",
        argv=_tidings_argv,
        health_path="/health",
        publish_path="/api/publish",
        wrap=lambda data: b'{"channel":"%s","data":%s}' % (loadgen.CHANNEL.encode(), data),
        subscribe=b'{"id":1,"op":"subscribe","channel":"%s"}' % loadgen.CHANNEL.encode(),
        count_path=f"/api/channels?prefix={loadgen.CHANNEL}",
        count_of=lambda answer: tidings_subscribers(answer.json()),
    ),
    "naive": Target(
        name="naive",
        argv=_naive_argv,
        health_path="/health",
        publish_path="/publish",
        wrap=lambda data: data,
        subscribe=None,
        count_path="/subscribers",
        count_of=lambda answer: int(answer.json()["subscribers"]),
    ),
}


# -- one phase -----------------------------------------------------------------------------


async def measure(
    server: ServerProcess,
    collector: loadgen.Collector,
    receipts: loadgen.Receipts,
    publish: Callable[[], Awaitable[None]],
    drain_timeout_s: float,
) -> report.PhaseFigures:
    """Publish, wait for every delivery (or the time-out), and measure the window."""
    collector.current = receipts
    start = CpuReading.take(server.pid, SERVER_CPU, GENERATOR_CPU)
    start_ns = time.time_ns()
    await publish()
    publish_s = (time.time_ns() - start_ns) / 1e9
    await receipts.wait_complete(drain_timeout_s)
    used = CpuReading.take(server.pid, SERVER_CPU, GENERATOR_CPU) - start
    window_s = max(receipts.last_ns - start_ns, 1) / 1e9
    latencies = sorted(receipts.latencies_ns)
    delivered = max(receipts.received, 1)
    return report.PhaseFigures(
        expected=receipts.expected,
        deliveries=receipts.received,
        duplicates=receipts.duplicates,
        deliveries_per_s=receipts.received / window_s,
        publications_per_s=receipts.count / max(publish_s, 1e-9),
        p50_ms=report.percentile_ms(latencies, 0.50),
        p99_ms=report.percentile_ms(latencies, 0.99),
        server_cpu_us_per_delivery=used.server_s * 1e6 / delivered,
        server_cpu_pct=used.percent(used.server_s),
        generator_cpu_pct=used.percent(used.generator_s),
        generator_cpu_us_per_delivery=used.generator_s * 1e6 / delivered,
        server_core_other_pct=used.others_pct(used.server_core_s, used.server_s),
        generator_core_other_pct=used.others_pct(used.generator_core_s, used.generator_s),
    )


# -- one run of one server -----------------------------------------------------------------


async def run_once(
    target: Target, options: Options, log_dir: Path, run: int
) -> dict[str, report.PhaseFigures]:
    """Start ``target``, drive every phase against it, stop it; the figures by phase."""
    await wait_for_quiet_cores(options.quiet_wait_s)
    port = free_port()
    log_path = log_dir / f"{target.name}-{run}.log"
    server = start_server(target.name, target.argv(port), port, log_path, SERVER_CPU)
    try:
        await wait_healthy(server, target.health_path)
        return await _drive(target, server, options, run)
    finally:
        server.stop()


async def _drive(
    target: Target, server: ServerProcess, options: Options, run: int
) -> dict[str, report.PhaseFigures]:
    collector = loadgen.Collector(options.subscribers)
    subscribers = await loadgen.connect_subscribers(
        HOST, server.port, options.subscribers, collector, subscribe=target.subscribe
    )
    try:
        await wait_subscribed(target, server.port, options.subscribers)
        publisher = await loadgen.HttpPublisher.open(HOST, server.port, target.publish_path)
        profile = None if options.py_spy is None else _numbered(options.py_spy, run)
        async with _profiled(server.pid, profile):
            figures = await _phases(target, server, collector, publisher, options)
        await publisher.close()
        return figures
    finally:
        for subscriber in subscribers:
            subscriber.close()


async def _phases(
    target: Target,
    server: ServerProcess,
    collector: loadgen.Collector,
    publisher: loadgen.HttpPublisher,
    options: Options,
) -> dict[str, report.PhaseFigures]:
    """Warm up (not reported), then the ``rate`` and ``burst`` phases, one after the other."""
    warmup, steady, burst = _seq_ranges(options)
    wrap = target.wrap

    def at_rate(seqs: range) -> Callable[[], Awaitable[None]]:
        return lambda: loadgen.publish_at_rate(publisher, wrap, seqs, options.rate)

    plan = [
        ("warm-up", warmup, at_rate(warmup)),
        ("rate", steady, at_rate(steady)),
        ("burst", burst, lambda: loadgen.publish_burst(publisher, wrap, burst)),
    ]
    figures = {}
    for name, seqs, publish in plan:
        receipts = loadgen.Receipts(options.subscribers, seqs.start, len(seqs))
        figures[name] = await measure(server, collector, receipts, publish, options.drain_timeout_s)
    del figures["warm-up"]
    return figures


def _seq_ranges(options: Options) -> tuple[range, range, range]:
    steady_start = options.warmup
    burst_start = steady_start + options.publications
    return (
        range(0, steady_start),
        range(steady_start, burst_start),
        range(burst_start, burst_start + options.burst),
    )


async def wait_subscribed(
    target: Counting,
    port: int,
    count: int,
    *,
    timeout_s: float = SUBSCRIBED_TIMEOUT_S,
    strict: bool = True,
) -> int:
    """Wait until the server itself counts ``count`` subscribers; the count it gave last.

    Raises:
        RuntimeError: it did not within ``timeout_s`` (unless not ``strict``).
    """
    deadline_s = time.monotonic() + timeout_s
    url = f"http://{HOST}:{port}{target.count_path}"
    async with httpx.AsyncClient() as client:
        while True:
            counted = target.count_of(await client.get(url))
            if counted >= count:
                return counted
            if time.monotonic() >= deadline_s:
                if strict:
                    raise RuntimeError(f"{target.name} counted {counted} of {count} subscribers")
                return counted
            await asyncio.sleep(0.1)


async def wait_for_quiet_cores(max_wait_s: float) -> None:
    """Wait (at most ``max_wait_s``) until nothing else keeps the benchmark's cores busy."""
    deadline_s = time.monotonic() + max_wait_s
    while True:
        cores = (SERVER_CPU, GENERATOR_CPU)
        before = [core_busy_s(cpu) for cpu in cores]
        await asyncio.sleep(QUIET_SAMPLE_S)
        busy_pct = max(
            100 * (core_busy_s(cpu) - start) / QUIET_SAMPLE_S
            for cpu, start in zip(cores, before, strict=True)
        )
        if busy_pct < QUIET_BUSY_PCT:
            return
        if time.monotonic() >= deadline_s:
            print(f"cores still {busy_pct:.0f}% busy with other work; running anyway", flush=True)
            return


def _numbered(path: Path, run: int) -> Path:
    return path.with_name(f"{path.stem}.run{run}{path.suffix}")


@contextlib.asynccontextmanager
async def _profiled(pid: int, output: Path | None) -> AsyncIterator[None]:
    """Sample ``pid`` with py-spy (collapsed stacks to ``output``) while the block runs."""
    if output is None:
        yield
        return
    py_spy = Path(sys.executable).parent / "py-spy"
    argv = [str(py_spy), "record", "--pid", str(pid), "--rate", "250", "--format", "raw"]
    argv += ["--output", str(output), "--nonblocking"]
    sampler = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    await asyncio.sleep(PROFILER_ATTACH_S)
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        await asyncio.wait_for(sampler.wait(), 30)


# -- the whole benchmark ---------------------------------------------------------------


async def benchmark(options: Options) -> report.Results:
    """Every run of every server, alternating which goes first."""
    targets = [TARGETS[name] for name in options.servers]
    results: report.Results = {t.name: {} for t in targets}
    with tempfile.TemporaryDirectory(prefix="tidings-bench-") as log_dir:
        for run in range(1, options.runs + 1):
            for target in targets if run % 2 else reversed(targets):
                figures = await run_once(target, options, Path(log_dir), run)
                for phase, measured in figures.items():
                    results[target.name].setdefault(phase, []).append(measured)
                    _print_progress(run, options.runs, target.name, phase, measured)
    return results


def _print_progress(
    run: int, runs: int, server: str, phase: str, figures: report.PhaseFigures
) -> None:
    print(
        f"run {run}/{runs} {server:8} {phase:6} {figures.deliveries_per_s:10,.0f} deliveries/s"
        f"  p50 {figures.p50_ms:7.2f} ms  p99 {figures.p99_ms:7.2f} ms"
        f"  {figures.server_cpu_us_per_delivery:6.2f} µs/delivery"
        f"  server {figures.server_cpu_pct:3.0f}%  generator {figures.generator_cpu_pct:3.0f}%"
        f"  missing {figures.missing:,}",
        flush=True,
    )


def parse_options(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--subscribers", type=int, default=1000, help="WebSocket subscribers (default 1000)")
    add("--publications", type=int, default=200, help="publications of the rate phase")
    add("--rate", type=float, default=20.0, help="publications per second (default 20)")
    add("--burst", type=int, default=200, help="publications of the burst phase")
    add("--warmup", type=int, default=20, help="unmeasured publications first (default 20)")
    add("--runs", type=int, default=3, help="runs of each server (default 3)")
    add("--drain-timeout", type=float, default=10.0, help="s to wait for late deliveries")
    add("--quiet-wait", type=float, default=30.0, help="s to wait for idle cores per run")
    add("--servers", default="tidings,naive", help="comma-separated: tidings, naive")
    add("--results", default=str(BENCHMARKS_DIR / "RESULTS.md"), help="'-' to skip writing")
    add("--py-spy", default=None, help="profile tidings with py-spy into this file (raw)")
    args = parser.parse_args(argv)
    servers = tuple(name.strip() for name in args.servers.split(",") if name.strip())
    unknown = set(servers) - set(TARGETS)
    if unknown or not servers:
        parser.error(f"--servers takes {', '.join(TARGETS)}; got {args.servers!r}")
    return Options(
        subscribers=args.subscribers,
        publications=args.publications,
        rate=args.rate,
        burst=args.burst,
        warmup=args.warmup,
        runs=args.runs,
        drain_timeout_s=args.drain_timeout,
        quiet_wait_s=args.quiet_wait,
        servers=servers,
        results=None if args.results == "-" else Path(args.results),
        py_spy=None if args.py_spy is None else Path(args.py_spy).resolve(),
    )


def _setup(options: Options) -> str:
    return (
        f"{report.provenance()}\n\n"
        f"Workload: one channel, {options.subscribers:,} WebSocket subscribers; "
        f"`rate`: {options.publications:,} publications at {options.rate:g}/s; "
        f"`burst`: {options.burst:,} publications back to back; ~{loadgen.PAYLOAD_BYTES}-byte "
        f"data; {options.runs} runs per server. Server on CPU {SERVER_CPU}, "
        f"generator on CPU {GENERATOR_CPU}, loopback."
    )


def main() -> None:
    """Run the benchmark, print the table, write RESULTS.md."""
    options = parse_options()
    prepare_generator(GENERATOR_CPU)
    environment = report.machine()  # before the load, so the load average is the machine's
    results = uvloop.run(benchmark(options))
    tables = (
        report.table(results),
        report.table(results, report.CONDITIONS, with_missing=False),
    )
    notes = report.warnings(results)
    print(f"\n{tables[0]}\n\n{tables[1]}\n")
    text = report.results_markdown(tables, _setup(options), notes, environment)
    # The profiler slows a profiled run down: its figures are not written.
    results_file = options.results if options.py_spy is None else None
    report.warn_and_write(notes, results_file, RESULTS_HEADING, text)


if __name__ == "__main__":
    main()
