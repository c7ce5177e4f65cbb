"""Side-by-side comparison: tidings against Nchan, a naive Starlette loop and python-socketio.

What it measures, in one command (issue #6), each workload against each server that
speaks it, on loopback with ~100-byte publications, the server pinned to CPU 0 and
the generator to CPU 1, ``--runs`` runs of each (a fresh server per run; runs
alternate which server goes first), medians with min–max:

1. ``websocket``: one channel, ``--subscribers`` WebSocket subscribers, ``--rate``
   publications/s: server CPU µs per delivery, latency p50/p99;
2. ``sse``: the same over Server-Sent Events;
3. ``long-poll``: ``--long-poll-subscribers`` long pollers, ``--long-poll-rate``/s;
4. ``short-poll``: ``wrk`` repeating a poll that has nothing new (``304``): requests/s
   and server CPU µs per request;
5. ``idle``: server RSS per idle WebSocket connection (``--idle-connections``), and
   whether one process holds ``--hold-connections``;
6. ``publish``: publications/s through tidings' server API, pipelined;
7. ``publish-batch``: the same with ``POST /api/broadcast`` into ``--publish-batch``
   channels per request.

Servers: ``tidings`` (``python -m tidings serve``, memory broker, its default server
backend), ``tidings-uvicorn`` (``--server-backend uvicorn``, skipped with a note
while ``tidings serve`` has no such option), ``nchan`` (Debian's nginx and Nchan
module, installed and configured by ``nchan.py``), ``naive`` (``naive_server.py``) and
``socketio`` (``socketio_server.py``, python-socketio 5 on uvicorn). The workloads are
in ``workloads.py`` and the tables in ``comparison.py``; this module picks the
servers, installs what they need, repeats the runs and writes the
``# Side-by-side comparison`` section of RESULTS.md.

Run: ``.venv/bin/python benchmarks/compare.py`` (``--help`` for the options;
``--quick`` for a short try).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

import uvloop

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import clients, comparison, fanout, loadgen, nchan, report, workloads, wrk
from benchmarks.comparison import MIB, Comparison, Plan, Setup
from benchmarks.server_process import (
    ServerProcess,
    child_pids,
    free_port,
    prepare_generator,
    start_server,
    wait_healthy,
)
from benchmarks.workloads import Contender, IdleFigures, PublishFigures, ShortPollFigures, Sizes

SERVER_CPU: Final = fanout.SERVER_CPU
GENERATOR_CPU: Final = fanout.GENERATOR_CPU
BENCHMARKS_DIR: Final = Path(__file__).resolve().parent
SERVERS: Final = ("tidings", "tidings-uvicorn", "nchan", "naive", "socketio")
WORKLOAD_WIDTH: Final = max(map(len, workloads.WORKLOADS))  # the printed lines line up
LIBRARIES: Final = (*report.LIBRARIES, "python-socketio", "python-engineio")
BACKEND_OPTION: Final = "--server-backend"
# tidings refuses connections past max_connections (10,000 by default); the idle
# workload asks whether one process can hold more, so the cap is raised above it.
TIDINGS_ENV: Final = {"TIDINGS_MAX_CONNECTIONS": "20000"}
PORT_RANGE: Final = "/proc/sys/net/ipv4/ip_local_port_range"
FILES_SPARE: Final = 200  # descriptors beyond the connections: logs, pipes, the publisher
DEFAULT_RUNS: Final = 3
DEFAULT_QUIET_WAIT_S: Final = 30.0
# What --quick changes (each still overridden by its own option).
QUICK: Final[dict[str, Any]] = {
    "runs": 1,
    "subscribers": 200,
    "long_poll_subscribers": 100,
    "duration_s": 3.0,
    "warmup_s": 1.0,
    "wrk_duration_s": 3,
    "idle_connections": 1000,
    "hold_connections": 1500,
    "publish_duration_s": 2.0,
    "quiet_wait_s": 5.0,
}


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    plan: Plan
    quiet_wait_s: float
    results: Path | None


# -- the servers ---------------------------------------------------------------------------

Launch = Callable[[int, Path], ServerProcess]


def has_backend_option() -> bool:
    """Whether ``tidings serve`` takes ``--server-backend`` (the native backend landed)."""
    shown = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return BACKEND_OPTION in shown.stdout


def _launcher(name: str, argv: Callable[[int], list[str]], env: dict[str, str] | None) -> Launch:
    """Start ``argv(port)`` pinned to the server's CPU, its output in the run's log dir."""

    def launch(port: int, log_dir: Path) -> ServerProcess:
        log_path = log_dir / f"{name}-{port}.log"
        return start_server(name, argv(port), port, log_path, SERVER_CPU, env=env)

    return launch


def _script(name: str, script: str) -> Launch:
    path = str(BENCHMARKS_DIR / script)
    argv = [sys.executable, path, "--log-level", "warning", "--port"]
    return _launcher(name, lambda port: [*argv, str(port)], None)


def _nchan_launch(port: int, log_dir: Path) -> ServerProcess:
    return nchan.start(port, log_dir, SERVER_CPU)


def _tidings(name: str, backend: list[str]) -> Contender:
    target = fanout.TARGETS["tidings"]
    return Contender(
        name=name,
        launch=_launcher(name, lambda port: [*target.argv(port), *backend], TIDINGS_ENV),
        health_path=target.health_path,
        publish_path=target.publish_path,
        wrap=target.wrap,
        count_path=target.count_path,
        count_of=target.count_of,
        subscribers={
            "websocket": clients.websocket(),
            "sse": clients.sse(f"/sse?channel={loadgen.CHANNEL}", b"event: subscribed"),
            "long-poll": clients.tidings_poll(nchan.LONG_POLL_WAIT_S),  # as long as Nchan's
        },
        short_poll=workloads.tidings_short_poll,
        publishes=True,
        broadcast=workloads.tidings_broadcast,
    )


def _script_server(name: str, script: str, subscribers: dict[str, clients.Opener]) -> Contender:
    """A server of this directory with ``naive_server.py``'s HTTP side (``/publish``...)."""
    naive = fanout.TARGETS["naive"]
    return Contender(
        name=name,
        launch=_script(name, script),
        health_path=naive.health_path,
        publish_path=naive.publish_path,
        wrap=naive.wrap,
        count_path=naive.count_path,
        count_of=naive.count_of,
        subscribers=subscribers,
    )


def contenders() -> dict[str, Contender]:
    """Every server the comparison knows, by name."""
    # Subscribed by the upgrade or the request alone: one channel per server.
    websocket, sse = clients.websocket("/ws", None), clients.sse("/sse", None)
    return {
        "tidings": _tidings("tidings", []),
        "tidings-uvicorn": _tidings("tidings-uvicorn", [BACKEND_OPTION, "uvicorn"]),
        "nchan": Contender(
            name="nchan",
            launch=_nchan_launch,
            health_path="/health",
            publish_path="/pub",
            wrap=lambda data: data,  # the body is the publication
            count_path="/pub",
            count_of=nchan.subscribers_of,
            subscribers={
                "websocket": websocket,
                "sse": sse,
                "long-poll": clients.nchan_long_poll("/lp"),
            },
            short_poll=workloads.nchan_short_poll,
        ),
        "naive": _script_server("naive", "naive_server.py", {"websocket": websocket, "sse": sse}),
        "socketio": _script_server(
            "socketio", "socketio_server.py", {"websocket": clients.socket_io}
        ),
    }


def prepare(options: Options) -> tuple[Options, list[str]]:
    """Install what the chosen servers and workloads need; drop what cannot run, saying why."""
    skipped = []
    servers = list(options.plan.servers)
    if "tidings-uvicorn" in servers and not has_backend_option():
        servers.remove("tidings-uvicorn")
        skipped.append(
            f"tidings-uvicorn skipped: `tidings serve` has no {BACKEND_OPTION} option yet "
            "(uvicorn is its only backend, so `tidings` is that one)"
        )
    if "socketio" in servers and importlib.util.find_spec("socketio") is None:
        servers.remove("socketio")
        skipped.append(
            "socketio skipped: python-socketio is not installed (`pip install -e '.[bench]'`)"
        )
    if "idle" in options.plan.workloads:
        _check_room_for(options.plan.sizes.hold_connections)
    if "nchan" in servers:
        nchan.ensure_installed()
    if "short-poll" in options.plan.workloads:
        wrk.ensure_installed()
    for note in skipped:
        print(f"note: {note}", flush=True)
    return replace(options, plan=replace(options.plan, servers=tuple(servers))), skipped


def _check_room_for(connections: int) -> None:
    """Fail early when this machine cannot open ``connections`` from one source address.

    Every client connection takes an ephemeral port of 127.0.0.1 and a file descriptor
    of this process (and the server one of its own; nginx sets its own limit).
    """
    low, high = map(int, Path(PORT_RANGE).read_text().split())
    ports = high - low + 1
    _soft, files = resource.getrlimit(resource.RLIMIT_NOFILE)
    if connections + FILES_SPARE > min(ports, files):
        raise SystemExit(
            f"--hold-connections {connections:,} needs more than the {ports:,} ephemeral "
            f"ports ({PORT_RANGE}) or the {files:,} open files (hard RLIMIT_NOFILE) here"
        )


# -- the runs ------------------------------------------------------------------------------


async def run_one(
    contender: Contender, workload: str, options: Options, log_dir: Path, results: Comparison
) -> None:
    """Start a fresh ``contender``, run ``workload`` once, stop it; keep the figures."""
    await fanout.wait_for_quiet_cores(options.quiet_wait_s)
    port = free_port()
    server = contender.launch(port, log_dir)
    try:
        await wait_healthy(server, contender.health_path)
        if server.worker_pid is None and child_pids(server.pid):
            results.note(f"{contender.name} had child processes: only its own was measured")
        line = await _measure(contender, workload, server, options.plan.sizes, results)
        print(f"{workload:{WORKLOAD_WIDTH}} {contender.name:15} {line}", flush=True)
    finally:
        try:
            await asyncio.sleep(0.2)  # let the closed clients' sockets actually close
            await asyncio.to_thread(server.stop)
        finally:
            server.stop()  # already stopped, unless the run was interrupted


async def _measure(
    contender: Contender,
    workload: str,
    server: ServerProcess,
    sizes: Sizes,
    results: Comparison,
) -> str:
    """Run ``workload``, keep its figures in ``results``; one line saying what it found."""
    name = contender.name
    if workload in workloads.FAN_OUT:
        figures = await workloads.fan_out(contender, workload, server, sizes)
        results.fan_out.setdefault(name, {}).setdefault(workload, []).append(figures)
        return _fan_out_line(figures)
    if workload == "short-poll":
        polled = await workloads.short_poll(contender, server, sizes)
        results.short_poll.setdefault(name, []).append(polled)
        return _short_poll_line(polled)
    if workload == "idle":
        held = await workloads.idle(contender, server, sizes)
        results.idle.setdefault(name, []).append(held)
        return _idle_line(held)
    published = await workloads.publishing(contender, workload, server, sizes)
    results.publish.setdefault(name, {}).setdefault(workload, []).append(published)
    return _publish_line(published)


async def benchmark(options: Options, known: dict[str, Contender]) -> Comparison:
    """Every run of every workload on every server taking part in it."""
    results = Comparison()
    with tempfile.TemporaryDirectory(prefix="tidings-compare-") as log_dir:
        for workload in options.plan.workloads:
            taking_part = [
                known[name] for name in options.plan.servers if known[name].takes_part_in(workload)
            ]
            for run in range(1, options.plan.runs + 1):
                for contender in taking_part if run % 2 else reversed(taking_part):
                    # A task boundary: one failed run is reported, the others still run.
                    try:
                        await run_one(contender, workload, options, Path(log_dir), results)
                    except Exception as exc:
                        what = f"{workload} run {run} on {contender.name} failed"
                        print(f"error: {what}: {exc!r}", flush=True)
                        results.note(f"{what}: {_gist(exc)}")
    return results


def _gist(exc: Exception) -> str:
    """The first and last lines of what ``exc`` says (a server's log tail is long)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [repr(exc)]
    gist = lines[0] if len(lines) == 1 else f"{lines[0]} … {lines[-1]}"
    return f"{type(exc).__name__}: {gist}"


def _fan_out_line(f: report.PhaseFigures) -> str:
    return (
        f"{f.deliveries_per_s:9,.0f} deliveries/s  {f.publications_per_s:5.1f} pub/s"
        f"  p50 {f.p50_ms:7.2f} ms  p99 {f.p99_ms:8.2f} ms"
        f"  {f.server_cpu_us_per_delivery:6.2f} µs/delivery (generator"
        f" {f.generator_cpu_us_per_delivery:5.2f})  server {f.server_cpu_pct:3.0f}%"
        f"  generator {f.generator_cpu_pct:3.0f}%  missing {f.missing:,}"
    )


def _short_poll_line(f: ShortPollFigures) -> str:
    return (
        f"{f.requests_per_s:9,.0f} requests/s  {f.server_cpu_us_per_request:6.2f} µs/request"
        f" (wrk {f.generator_cpu_us_per_request:5.2f})  p99 {f.p99_ms:6.2f} ms"
        f"  server {f.server_cpu_pct:3.0f}%  wrk {f.generator_cpu_pct:3.0f}%  errors {f.errors:,}"
    )


def _idle_line(f: IdleFigures) -> str:
    return (
        f"{f.bytes_per_connection / 1024:6.1f} KiB/connection  RSS {f.rss_before_bytes / MIB:6.1f}"
        f" → {f.rss_after_bytes / MIB:6.1f} MiB with {f.added:,} more  opened in"
        f" {f.open_s:5.1f} s  held {f.held:,} of {f.target:,}"
    )


def _publish_line(f: PublishFigures) -> str:
    return (
        f"{f.publications_per_s:9,.0f} publications/s  {f.server_cpu_us_per_publication:6.2f}"
        f" µs/publication (generator {f.generator_cpu_us_per_publication:5.2f})"
        f"  server {f.server_cpu_pct:3.0f}%  generator {f.generator_cpu_pct:3.0f}%"
        f"  failed {f.failed:,}"
    )


# -- the command ---------------------------------------------------------------------------


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_options(argv: list[str] | None = None) -> Options:
    """Read the command line; ``--quick`` changes the defaults named in ``QUICK``."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--workloads", default=",".join(workloads.WORKLOADS), help="comma-separated subset")
    add("--servers", default=",".join(SERVERS), help="comma-separated subset")
    add("--runs", type=int, help=f"runs per server and workload (default {DEFAULT_RUNS})")
    add("--quick", action="store_true", help="a short try: 1 run, fewer clients, 3 s phases")
    add("--subscribers", type=int, help="websocket and sse subscribers (default 1000)")
    add("--rate", type=float, help="websocket and sse publications/s (default 50)")
    add("--long-poll-subscribers", type=int, help="long pollers (default 500)")
    add("--long-poll-rate", type=float, help="long-poll publications/s (default 10)")
    add("--duration", dest="duration_s", type=float, help="s measured per fan-out run (10)")
    add("--warmup", dest="warmup_s", type=float, help="s unmeasured first (default 2)")
    add("--drain-timeout", dest="drain_timeout_s", type=float, help="s for late deliveries")
    add("--wrk-connections", type=int, help="wrk's keep-alive connections (default 50)")
    add("--wrk-duration", dest="wrk_duration_s", type=int, help="s per wrk run (default 10)")
    add("--idle-connections", type=int, help="idle connections measured (default 10000)")
    add("--hold-connections", type=int, help="connections to hold in all (default 15000)")
    add("--publish-connections", type=int, help="publishing connections (default 4)")
    add("--publish-depth", type=int, help="pipelined requests per connection (default 64)")
    add("--publish-duration", dest="publish_duration_s", type=float, help="s (default 5)")
    add("--publish-batch", type=int, help="channels per publish-batch request (default 100)")
    add("--quiet-wait", dest="quiet_wait_s", type=float, help="s to wait for idle cores (30)")
    add(
        "--results",
        help="file to write the section into (default benchmarks/RESULTS.md; "
        "with --quick none); '-' not to write it",
    )
    args = parser.parse_args(argv)
    given = {name: value for name, value in vars(args).items() if value is not None}
    values = {**(QUICK if args.quick else {}), **given}
    sizes = Sizes(**{f.name: values[f.name] for f in fields(Sizes) if f.name in values})
    chosen, servers = _csv(args.workloads), _csv(args.servers)
    if not chosen or set(chosen) - set(workloads.WORKLOADS):
        parser.error(f"--workloads takes {', '.join(workloads.WORKLOADS)}")
    if not servers or set(servers) - set(SERVERS):
        parser.error(f"--servers takes {', '.join(SERVERS)}")
    if sizes.hold_connections <= sizes.idle_connections:
        parser.error("--hold-connections must be more than --idle-connections")
    if sizes.publish_batch < 1:
        parser.error("--publish-batch must be at least 1")
    results = args.results or (None if args.quick else str(BENCHMARKS_DIR / "RESULTS.md"))
    plan = Plan(
        workloads=tuple(name for name in workloads.WORKLOADS if name in chosen),
        servers=tuple(name for name in SERVERS if name in servers),
        runs=values.get("runs", DEFAULT_RUNS),
        sizes=sizes,
    )
    return Options(
        plan=plan,
        quiet_wait_s=values.get("quiet_wait_s", DEFAULT_QUIET_WAIT_S),
        results=None if results in (None, "-") else Path(results),
    )


def _run(options: Options) -> Comparison:
    result: Comparison = uvloop.run(benchmark(options, contenders()))
    return result


def main() -> None:
    """Run every chosen workload on every chosen server, print the tables, write RESULTS.md."""
    options, skipped = prepare(parse_options())
    prepare_generator(GENERATOR_CPU)
    # Before the load, so the load average is the machine's.
    environment = (*report.machine(LIBRARIES), ("Debian packages", _debian_versions()))
    started_s = time.monotonic()
    result = _run(options)
    found = comparison.warnings(result, options.plan.sizes)
    for title, text in comparison.tables(result, options.plan.sizes):
        print(f"\n{title}\n\n{text}")
    print()
    for note in [*found, *result.notes]:
        print(f"warning: {note}")
    print(f"took {(time.monotonic() - started_s) / 60:.1f} min")
    if options.results is not None:
        setup = Setup(options.plan, tuple(skipped), environment)
        text = comparison.section(setup, result, found)
        report.write_section(options.results, comparison.HEADING, text)
        print(f"written: {os.path.relpath(options.results)}")


def _debian_versions() -> str:
    return f"{nchan.versions()}, {wrk.version()}"


if __name__ == "__main__":
    main()
