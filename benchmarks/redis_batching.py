"""Redis broker at its limit: auto-batched publishes against one script per round trip,
on one Redis and on Redis Clusters of 1 and 3 shards, side by side in one run.

What it measures, per subject and number of concurrent publishers (``--concurrency``):

* **publications/s**: ``broker.publish`` called directly from asyncio by that many
  workers at once, each publishing one after another, over ``--channels`` channels.
* **publisher CPU µs per publication**: this process's CPU time (``time.process_time``)
  over the publications made; the workers' own loop is in it, as it is for every subject.
* **Redis CPU µs per publication**: the CPU time of the ``redis-server`` processes
  (``/proc/<pid>/stat``, user + system, summed over a cluster's masters), which counts
  reading commands and writing replies too; and **script µs per publication**: what
  Redis reports for EVALSHA and EVAL in ``INFO commandstats`` (``usec``), divided by
  the publications made, not by the script calls (a batched script call makes many).

The subjects: ``batch = false`` (``?batch=no``: each script its own round trip, the path
before batching) and the default, batched, on one dedicated ``redis-server``; then the
batched broker (and the unbatched one on 3 shards) on local clusters of 1 and 3 masters.
Every server is started here, on free ports, with no persistence (``tests/support``'s
helpers), so their statistics hold nothing but this run's; they are stopped at the end.
The subjects alternate within each run so the drift of a shared machine's load is
shared; figures are the median of ``--runs`` with [min, max].

Run: ``.venv/bin/python benchmarks/brokers.py --redis-batching`` (or this module).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import redis
import uvloop
from redis.utils import HIREDIS_AVAILABLE

if __package__ in (None, ""):  # run as a script: make `tidings` and `tests` importable
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent / s) for s in ("src", "")]

from tests.support.redis_cluster import (
    LocalRedisCluster,
    RedisServer,
    free_port,
    redis_cli,
    start_cluster,
    wait_until,
)

from tidings.brokers.redis import RedisBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces

NAMESPACES: Final = Namespaces(
    {NamespaceName("bench"): NamespaceOptions(history=HistoryOptions(100, 3_600_000))}
)
DATA: Final = b'{"text":"a publication of some sixty bytes, as a chat line is"}'
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    publications: int
    concurrency: tuple[int, ...]
    channels: int
    runs: int


@dataclass(frozen=True, slots=True)
class Subject:
    """A broker URL under test and the servers whose CPU and statistics it costs."""

    name: str
    url: str
    servers: tuple[RedisServer, ...]


@dataclass(frozen=True, slots=True)
class Sample:
    """One throughput run."""

    rate: float
    publisher_us: float
    redis_us: float
    script_us: float


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--publications", type=int, default=20_000, help="per throughput run")
    parser.add_argument("--concurrency", default="1,16,128", help="publishers at once")
    parser.add_argument("--channels", type=int, default=64, help="channels published to")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    args = parser.parse_args(argv)
    return Options(
        publications=args.publications,
        concurrency=tuple(int(n) for n in args.concurrency.split(",")),
        channels=args.channels,
        runs=args.runs,
    )


def start_one_shard_cluster(directory: Path) -> LocalRedisCluster:
    """A cluster of one master holding every slot (``redis-cli --cluster create``
    wants three)."""
    port = free_port(with_cluster_bus=True)
    extra = ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
    server = RedisServer(directory / str(port), port, extra).start()
    cluster = LocalRedisCluster([server])
    redis_cli(port, "CLUSTER", "ADDSLOTSRANGE", "0", "16383")
    wait_until("the one-shard cluster is ok", cluster.is_ok)
    return cluster


def server_cpu_s(servers: Sequence[RedisServer]) -> float:
    """User + system CPU seconds of ``servers`` so far."""
    total = 0
    for server in servers:
        assert server.process is not None
        fields = Path(f"/proc/{server.process.pid}/stat").read_text().rpartition(")")[2].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLOCK_TICKS_PER_S


def script_usec(servers: Sequence[RedisServer]) -> float:
    """EVALSHA and EVAL µs so far, by ``INFO commandstats``, summed over ``servers``."""
    total = 0.0
    for server in servers:
        with redis.Redis(port=server.port) as client:
            stats = client.info("commandstats")
        for name in ("evalsha", "eval"):
            total += float((stats.get(f"cmdstat_{name}") or {}).get("usec", 0))
    return total


async def publish_run(subject: Subject, options: Options, concurrency: int, run: int) -> Sample:
    """One throughput run of ``subject`` with ``concurrency`` publishers."""
    broker = RedisBroker(subject.url, NAMESPACES)
    await broker.start(lambda publication: None)
    channels = [ChannelName(f"bench:{run}-{n}") for n in range(options.channels)]
    per_worker = max(1, options.publications // concurrency)

    async def worker(index: int) -> None:
        for n in range(per_worker):
            await broker.publish(channels[(index + n * concurrency) % len(channels)], DATA)

    try:
        await broker.publish(channels[0], DATA)  # connected, scripts loaded
        redis_before, script_before = server_cpu_s(subject.servers), script_usec(subject.servers)
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        redis_cpu = server_cpu_s(subject.servers) - redis_before
        script = script_usec(subject.servers) - script_before
    finally:
        await broker.close()
    count = per_worker * concurrency
    return Sample(count / elapsed, cpu / count * 1e6, redis_cpu / count * 1e6, script / count)


def summary(values: Sequence[float], style: str) -> str:
    """The median of the runs with [min, max]."""
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, style)
    return f"{median:{style}} [{min(values):{style}}, {max(values):{style}}]"


async def measure_subjects(subjects: list[Subject], options: Options) -> None:
    samples: dict[tuple[str, int], list[Sample]] = {}
    for run in range(options.runs):
        for concurrency in options.concurrency:
            for subject in subjects:  # alternate the subjects: drift is shared
                sample = await publish_run(subject, options, concurrency, run)
                samples.setdefault((subject.name, concurrency), []).append(sample)
                print(
                    f"run {run + 1}, {concurrency} publishers, {subject.name}: "
                    f"{sample.rate:,.0f}/s",
                    file=sys.stderr,
                )
    print_table(subjects, options, samples)


def print_table(
    subjects: list[Subject], options: Options, samples: dict[tuple[str, int], list[Sample]]
) -> None:
    parser = "hiredis" if HIREDIS_AVAILABLE else "pure-Python parser"
    print(
        f"\nRedis batching benchmark: Python {platform.python_version()}, uvloop, redis-py "
        f"{redis.__version__} with {parser}, {options.runs} runs, "
        f"{options.publications:,} publications per run over {options.channels} channels; "
        f"median [min, max]\n"
    )
    rows = []
    figures = (
        ("publications/s", "rate", ",.0f"),
        ("publisher CPU µs/publication", "publisher_us", ".1f"),
        ("Redis CPU µs/publication (process)", "redis_us", ".1f"),
        ("script µs/publication (commandstats)", "script_us", ".1f"),
    )
    for label, field, style in figures:
        for n in options.concurrency:
            rows.append(
                [f"{label}, {n} publishers"]
                + [
                    summary([getattr(s, field) for s in samples[(subject.name, n)]], style)
                    for subject in subjects
                ]
            )
    header = ["figure", *(subject.name for subject in subjects)]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


async def measure(options: Options) -> None:
    """Start the servers, measure every subject, print the table, stop the servers."""
    with tempfile.TemporaryDirectory(prefix="tidings-bench-redis-") as directory:
        root = Path(directory)
        single = RedisServer(root / "single").start()
        one = start_one_shard_cluster(root / "cluster1")
        three = start_cluster(root / "cluster3")
        try:
            cluster1, cluster3 = tuple(one.servers), tuple(three.servers)
            subjects = [
                Subject("redis, batch = false", single.url + "?batch=no", (single,)),
                Subject("redis, batched", single.url, (single,)),
                Subject("cluster 1 shard, batched", one.url, cluster1),
                Subject("cluster 3 shards, batch = false", three.url + "?batch=no", cluster3),
                Subject("cluster 3 shards, batched", three.url, cluster3),
            ]
            await measure_subjects(subjects, options)
        finally:
            single.stop()
            one.stop()
            three.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    uvloop.run(measure(parse_options(argv)))


if __name__ == "__main__":
    main()
