"""Broker benchmark: the memory, sqlite, Redis, PostgreSQL and NATS brokers side by side.

What it measures, per broker:

* **publish throughput**: ``broker.publish`` called directly from asyncio (no HTTP, no
  hub), by ``--concurrency`` workers at once, each publishing one after another, over
  ``--channels`` channels; publications per second.
* **delivery latency**: one publication every ``1/--rate`` seconds, timed from the call
  to ``publish`` to the moment the subscribed broker hands it to its handler, p50 and
  p99. For Redis and PostgreSQL that is *cross-node*: two broker instances (two nodes)
  on one Redis (one database), publishing on one, receiving on the other (PostgreSQL:
  through LISTEN/NOTIFY). The memory broker has one node only: its
  figure is the in-process hand-off, the floor any broker is compared with. NATS is
  cross-node too: two broker instances on one NATS.

Why: DESIGN.md asks every claim about speed to be a figure measured side by side with
an alternative in the same run. What Redis costs over memory is the price of many
nodes; this shows it. Each broker's throughput runs alternate (``--runs``) so drift in
the machine's load is shared; figures are the median with [min, max].

The sqlite broker runs twice, with ``durability = "full"`` (the default: the WAL is
fsynced at every group commit, before publishers are answered) and ``"fast"`` (written,
fsynced at checkpoints only): the difference is the price of an acknowledgement that
survives a power loss. Each sqlite broker writes to a fresh directory under
``--sqlite-dir`` (default: a temporary directory, on the disk that holds it).

For Redis the table also gives Redis's own CPU time per publish script (``INFO
commandstats``, EVALSHA and EVAL), which the rollback check of ``redis_scripts`` adds to.

Run: ``.venv/bin/python benchmarks/brokers.py`` (a Redis at 127.0.0.1:6379; database 15
is flushed first; a PostgreSQL at 127.0.0.1:5432, database ``test``, whose schema
``tidings_bench`` is dropped first). ``--cluster redis-cluster://host:port`` adds a
Redis Cluster column; ``--postgres ''`` leaves PostgreSQL out.
``--redis-batching`` runs ``redis_batching`` instead: the Redis broker batched and not,
on one Redis and on clusters of 1 and 3 shards, on servers it starts itself. A NATS
with JetStream at 127.0.0.1:4222 is used too, where the stream and buckets of prefix
``tidings-bench`` are deleted before and after; ``--brokers memory,redis,nats`` runs
only those.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import nats
import psycopg
import redis
import uvloop
from psycopg import sql

if __package__ in (None, ""):  # run as a script: make `tidings` and `benchmarks` importable
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent / s) for s in ("src", "")]

from benchmarks import redis_batching

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.nats import NatsBroker, NatsTarget
from tidings.brokers.postgres import PostgresBroker
from tidings.brokers.postgres_target import PostgresTarget
from tidings.brokers.redis import RedisBroker, RedisTarget
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Publication

DEFAULT_REDIS: Final = "redis://127.0.0.1:6379/15?prefix=tidings-bench"
DEFAULT_POSTGRES: Final = "postgres://postgres@127.0.0.1:5432/test?schema=tidings_bench"
DEFAULT_NATS: Final = "nats://127.0.0.1:4222?prefix=tidings-bench"
NAMESPACES: Final = Namespaces(
    {NamespaceName("bench"): NamespaceOptions(history=HistoryOptions(100, 3_600_000))}
)
DATA: Final = b'{"text":"a publication of some sixty bytes, as a chat line is"}'


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    redis: str
    nats: str
    cluster: str | None
    postgres: str
    brokers: tuple[str, ...] | None
    publications: int
    concurrency: tuple[int, ...]
    channels: int
    rate: float
    latency_publications: int
    runs: int
    sqlite_dir: str | None


@dataclass(frozen=True, slots=True)
class Subject:
    """A broker under test: how to make one (a node) and whether two nodes share it."""

    name: str
    make: Callable[[], Broker]
    shared: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis URL (its db is flushed)")
    parser.add_argument("--nats", default=DEFAULT_NATS, help="NATS URL (its prefix is deleted)")
    parser.add_argument("--cluster", default=None, help="also a redis-cluster:// URL")
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL URL (its schema is dropped)"
    )
    parser.add_argument("--brokers", default=None, help="only these, comma-separated")
    parser.add_argument("--publications", type=int, default=20_000, help="per throughput run")
    parser.add_argument("--concurrency", default="1,16,128", help="publishers at once")
    parser.add_argument("--channels", type=int, default=64, help="channels published to")
    parser.add_argument("--rate", type=float, default=1_000.0, help="latency: publications/s")
    parser.add_argument("--latency-publications", type=int, default=3_000)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--sqlite-dir", default=None, help="where the sqlite brokers write")
    args = parser.parse_args(argv)
    return Options(
        redis=args.redis,
        nats=args.nats,
        cluster=args.cluster,
        postgres=args.postgres,
        brokers=None if args.brokers is None else tuple(args.brokers.split(",")),
        publications=args.publications,
        concurrency=tuple(int(n) for n in args.concurrency.split(",")),
        channels=args.channels,
        rate=args.rate,
        latency_publications=args.latency_publications,
        runs=args.runs,
        sqlite_dir=args.sqlite_dir,
    )


def subjects(options: Options) -> list[Subject]:
    def sqlite(durability: Literal["full", "fast"]) -> Callable[[], Broker]:
        def make() -> Broker:
            directory = tempfile.mkdtemp(prefix=f"bench-{durability}-", dir=options.sqlite_dir)
            return SqliteBroker(directory, NAMESPACES, durability=durability)

        return make

    found = [
        Subject("memory", lambda: MemoryBroker(NAMESPACES), shared=False),
        Subject("sqlite full", sqlite("full"), shared=False),
        Subject("sqlite fast", sqlite("fast"), shared=False),
        Subject("redis", lambda: RedisBroker(options.redis, NAMESPACES), shared=True),
        Subject("nats", lambda: NatsBroker(options.nats, NAMESPACES), shared=True),
    ]
    if options.cluster is not None:
        cluster = options.cluster
        found.append(Subject("redis-cluster", lambda: RedisBroker(cluster, NAMESPACES), True))
    if options.postgres:
        postgres = options.postgres
        found.append(Subject("postgres", lambda: PostgresBroker(postgres, NAMESPACES), True))
    if options.brokers is not None:
        found = [subject for subject in found if subject.name in options.brokers]
    return found


def channel_names(count: int, run: int) -> list[ChannelName]:
    return [ChannelName(f"bench:{run}-{n}") for n in range(count)]


async def publish_rate(
    subject: Subject, options: Options, concurrency: int, run: int
) -> tuple[float, float]:
    """Publications per second with ``concurrency`` publishers, and this process's CPU
    time per publication in µs (Redis's own time is not in it)."""
    broker = subject.make()
    await broker.start(lambda publication: None)
    channels = channel_names(options.channels, run)
    per_worker = max(1, options.publications // concurrency)

    async def worker(index: int) -> None:
        for n in range(per_worker):
            await broker.publish(channels[(index + n * concurrency) % len(channels)], DATA)

    try:
        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(worker(i) for i in range(concurrency)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    finally:
        await broker.close()
    count = per_worker * concurrency
    return count / elapsed, cpu / count * 1e6


async def delivery_latency_ms(subject: Subject, options: Options, run: int) -> list[float]:
    """Publish-to-handler times, in ms, publishing on one node and receiving on another."""
    sent: dict[int, int] = {}
    received: dict[int, int] = {}
    done = asyncio.Event()
    count = options.latency_publications

    def on_publication(publication: Publication) -> None:
        received[publication.offset] = time.perf_counter_ns()
        if len(received) >= count:
            done.set()

    receiver = subject.make()
    await receiver.start(on_publication)
    publisher = subject.make() if subject.shared else receiver
    if publisher is not receiver:
        await publisher.start(lambda publication: None)
    channel = ChannelName(f"bench:latency-{run}")
    try:
        await receiver.subscribe(channel)
        interval_s = 1.0 / options.rate
        next_at = time.perf_counter()
        pending = set()
        for n in range(count):
            next_at += interval_s
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[n + 1] = time.perf_counter_ns()
            pending.add(asyncio.ensure_future(publisher.publish(channel, DATA)))
            pending = {task for task in pending if not task.done()}
        await asyncio.gather(*pending)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        if publisher is not receiver:
            await publisher.close()
        await receiver.close()
    return sorted((received[offset] - sent[offset]) / 1e6 for offset in sent)


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile."""
    if not sorted_values:
        return math.nan
    return sorted_values[max(1, math.ceil(fraction * len(sorted_values))) - 1]


def summary(values: Sequence[float], style: str) -> str:
    """The median of the runs with [min, max]."""
    median = statistics.median(values)
    if len(values) == 1:
        return format(median, style)
    return f"{median:{style}} [{min(values):{style}}, {max(values):{style}}]"


def flush(url: str) -> None:
    with redis.Redis.from_url(RedisTarget.parse(url).url) as client:
        client.flushdb()


def drop_postgres_schema(url: str) -> None:
    """Start the PostgreSQL broker on an empty schema: drop the one the URL names."""
    target = PostgresTarget.parse(url)
    with psycopg.connect(target.conninfo, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(target.schema))
        )


def script_time(url: str) -> tuple[float, int]:
    """Redis's CPU µs and calls of EVALSHA and EVAL so far (``INFO commandstats``)."""
    with redis.Redis.from_url(RedisTarget.parse(url).url) as client:
        stats = client.info("commandstats")
    entries = [stats.get(f"cmdstat_{name}") or {} for name in ("evalsha", "eval")]
    return sum(float(e.get("usec", 0)) for e in entries), sum(
        int(e.get("calls", 0)) for e in entries
    )


async def delete_nats_prefix(url: str) -> None:
    """Delete the stream and buckets the NATS broker made under ``url``'s prefix."""
    target = NatsTarget.parse(url)
    client = await nats.connect(list(target.servers))
    try:
        for name in ("history", "presence", "keys"):
            stream = f"{target.prefix}-{name}"
            stream = stream if name == "history" else f"KV_{stream}"
            await client.request(f"$JS.API.STREAM.DELETE.{stream}", b"", timeout=5)
    finally:
        await client.close()


async def measure(options: Options) -> None:
    tested = subjects(options)
    flush(options.redis)
    if options.postgres:
        drop_postgres_schema(options.postgres)
    if any(subject.name == "nats" for subject in tested):
        await delete_nats_prefix(options.nats)
    try:
        await measure_all(options, tested)
    finally:
        if any(subject.name == "nats" for subject in tested):
            await delete_nats_prefix(options.nats)


async def measure_all(options: Options, tested: list[Subject]) -> None:
    rates: dict[tuple[str, int], list[float]] = {}
    cpu_us: dict[tuple[str, int], list[float]] = {}
    latencies: dict[str, list[tuple[float, float]]] = {}
    redis_us: list[float] = []
    for run in range(options.runs):
        for concurrency in options.concurrency:
            for subject in tested:  # alternate the brokers: drift is shared
                before = script_time(options.redis) if subject.name == "redis" else None
                rate, cpu = await publish_rate(subject, options, concurrency, run)
                if before is not None:
                    after = script_time(options.redis)
                    redis_us.append((after[0] - before[0]) / max(1, after[1] - before[1]))
                rates.setdefault((subject.name, concurrency), []).append(rate)
                cpu_us.setdefault((subject.name, concurrency), []).append(cpu)
        for subject in tested:
            times = await delivery_latency_ms(subject, options, run)
            latencies.setdefault(subject.name, []).append(
                (percentile(times, 0.50), percentile(times, 0.99))
            )
    print_table(options, tested, rates, cpu_us, latencies)
    if redis_us:
        print(f"\nRedis CPU per publish script: {summary(redis_us, '.1f')} µs")


def print_table(
    options: Options,
    tested: list[Subject],
    rates: dict[tuple[str, int], list[float]],
    cpu_us: dict[tuple[str, int], list[float]],
    latencies: dict[str, list[tuple[float, float]]],
) -> None:
    print(
        f"\nbrokers benchmark: Python {platform.python_version()}, uvloop, "
        f"{options.runs} runs, {options.publications:,} publications per throughput run "
        f"over {options.channels} channels, {options.latency_publications:,} at "
        f"{options.rate:,.0f}/s for latency; median [min, max]\n"
    )
    header = ["figure", *(subject.name for subject in tested)]
    rows = [
        [f"publications/s, {n} publishers"] + [summary(rates[(s.name, n)], ",.0f") for s in tested]
        for n in options.concurrency
    ]
    rows += [
        [f"publisher CPU µs/publication, {n} publishers"]
        + [summary(cpu_us[(s.name, n)], ".1f") for s in tested]
        for n in options.concurrency
    ]
    for index, label in ((0, "p50"), (1, "p99")):
        rows.append(
            [f"delivery latency {label} ms (memory, sqlite: in-process; others: node to node)"]
            + [summary([pair[index] for pair in latencies[s.name]], ".3f") for s in tested]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * width for width in widths], *rows]:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if "--redis-batching" in arguments:
        redis_batching.main([a for a in arguments if a != "--redis-batching"])
        return
    uvloop.run(measure(parse_options(argv)))


if __name__ == "__main__":
    main()
