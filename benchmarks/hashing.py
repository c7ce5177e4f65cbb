"""Hashing benchmark: user-addressed messages across 3 nodes, consistent hashing against
Redis pub/sub, side by side in one run.

The workload (issue #14, "Benchmark"): ``--users`` users, each with one WebSocket
subscriber of its own channel ``user:<id>``; ``--publications`` publications at
``--rate`` per second, each to one user drawn at random (seeded: every layout gets the
same users in the same order), posted to ``POST /api/publish``. Three ``tidings serve``
nodes, three layouts:

* **hashing**: a static ring (``ring_nodes``, ``cluster_secret``), each node with its
  own memory broker. Each subscriber connects to its user's owner (asked once with
  ``GET /route``); the publisher posts each publication to a node drawn at random (a
  load balancer in front of the server API), which forwards it to the owner unless it
  is the owner (about 2 in 3 are forwarded: one extra signed HTTP hop);
* **hashing-route**: the same ring, but the publisher also posts straight to the owner
  it learnt from ``GET /route`` (once per user, before the run): no forward;
* **redis**: the nodes share the machine's Redis (``127.0.0.1:6379``, database 15, a
  key prefix of this run's own, deleted afterwards); user ``u``'s subscriber is on node
  ``u % 3``, and the publisher posts to a node drawn at random, as in ``hashing``. The
  publishing node runs the Redis broker's publish script (offset, history stream,
  ``PUBLISH``); the node subscribed to the channel receives it from Redis.

Measured per layout and run, over the measured publications (after ``--warmup``
unmeasured ones): delivery latency p50/p99 (from the generator's clock just before the
request is written to the subscriber's socket read, one clock in one process), the
**CPU per delivery summed over the three node processes** (``/proc``, user + system,
all threads), and for ``redis`` the Redis server's CPU per delivery beside it (the
machine's shared Redis: whatever else used it in that window is counted too, so it is
an upper bound). Every publication is checked to reach its one subscriber once.

The nodes share CPU 0, the generator (this process) runs on CPU 1, like the other
benchmarks; Redis is the machine's and is not pinned. Runs alternate which layout goes
first so drift in the machine's load is shared. Figures: the median of the runs with
the minimum and maximum in brackets (``report.spread``).

Run: ``.venv/bin/python benchmarks/hashing.py`` (``--help`` for the options; about four
minutes with the defaults, ``--quick`` for a short try that writes nothing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
import jwt
import redis
import uvloop

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import loadgen, report
from benchmarks.fanout import wait_for_quiet_cores
from benchmarks.server_process import (
    ServerProcess,
    child_pids,
    core_busy_s,
    free_port,
    prepare_generator,
    process_cpu_s,
    start_server,
    wait_healthy,
)

HOST: Final = "127.0.0.1"
NODES_CPU: Final = 0
GENERATOR_CPU: Final = 1
NODE_IDS: Final = ("a", "b", "c")
LAYOUTS: Final = ("hashing", "hashing-route", "redis")
REDIS_URL: Final = "redis://127.0.0.1:6379/15"
CLUSTER_SECRET: Final = "hashing-benchmark-cluster-secret-of-32-bytes-or-more"
RESULTS_HEADING: Final = "# Hashing against Redis pub/sub"
BENCHMARKS_DIR: Final = Path(__file__).resolve().parent
PHASE: Final = "rate"
IDLE_SAMPLE_S: Final = 2.0
JWT_SECRET: Final = "hashing-benchmark-jwt-secret-of-32-bytes-or-more"
TOKEN_TTL_S: Final = 3600
# `user` is the built-in per-user namespace: user:<id> only for a token whose sub is <id>.
CONFIG: Final = f"""shutdown_timeout = "1s"
jwt_secret = "{JWT_SECRET}"
[namespaces.user]
history_size = 100
history_ttl = "10m"
"""


@dataclass(frozen=True, slots=True)
class Options:
    """The command line."""

    users: int
    publications: int
    warmup: int
    rate: float
    connections: int
    runs: int
    layouts: tuple[str, ...]
    drain_timeout_s: float
    quiet_wait_s: float
    seed: int
    results: Path | None


# -- receipts: one addressee per publication --------------------------------------------------


class AddressedReceipts(loadgen.Receipts):
    """``loadgen.Receipts`` for publications that each have one addressee: ``expected`` is
    one delivery per publication, and a delivery to anyone else is counted apart."""

    __slots__ = ("addressees", "misdelivered")

    def __init__(self, subscribers: int, seqs: range, addressees: Sequence[int]) -> None:
        super().__init__(subscribers, seqs.start, len(seqs))
        self.addressees = addressees  # by seq
        self.misdelivered = 0
        self.expected = len(seqs)  # not subscribers × publications: one each

    def record(self, subscriber: int, seq: int, sent_ns: int, now_ns: int) -> None:
        """Count one delivery, if ``subscriber`` is the publication's addressee."""
        if 0 <= seq - self.first_seq < self.count and self.addressees[seq] != subscriber:
            self.misdelivered += 1
            return
        super().record(subscriber, seq, sent_ns, now_ns)


@dataclass(frozen=True, slots=True)
class Plan:
    """Who each publication is for and which node it is posted to, by seq."""

    users: list[int]
    entries: list[int]  # index into the nodes

    @classmethod
    def draw(cls, options: Options) -> Plan:
        """The same seeded draw for every layout: a user and a node per publication."""
        rng = random.Random(options.seed)
        total = options.warmup + options.publications
        users = [rng.randrange(options.users) for _ in range(total)]
        entries = [rng.randrange(len(NODE_IDS)) for _ in range(total)]
        return cls(users, entries)


# -- the nodes ---------------------------------------------------------------------------------


def node_tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and its children (``--workers`` would add some; none by default)."""
    total = process_cpu_s(pid)
    with contextlib.suppress(OSError):
        for child in child_pids(pid):
            with contextlib.suppress(OSError):
                total += node_tree_cpu_s(child)
    return total


@dataclass
class Cluster:
    """Three running nodes, and which node each user's subscriber is on."""

    nodes: list[ServerProcess]
    home: list[int]  # by user: the node its subscriber is on
    redis_prefix: str | None

    def cpu_s(self) -> float:
        return sum(node_tree_cpu_s(node.pid) for node in self.nodes)


def _node_argv(port: int, config: Path, broker: str | None) -> list[str]:
    argv = [sys.executable, "-m", "tidings", "serve", "--host", HOST, "--port", str(port)]
    argv += ["--config", str(config), "--log-level", "warning"]
    return argv + (["--broker", broker] if broker is not None else [])


@contextlib.asynccontextmanager
async def cluster(layout: str, directory: Path, users: int) -> AsyncIterator[Cluster]:
    """Start the three nodes of ``layout``; yield them with each user's home node."""
    ports = [free_port() for _ in NODE_IDS]
    ring = "\n".join(
        f'{node} = "http://{HOST}:{port}"' for node, port in zip(NODE_IDS, ports, strict=True)
    )
    hashing = layout != "redis"
    prefix = None if hashing else f"tidings-bench-hashing-{uuid.uuid4().hex[:8]}"
    nodes: list[ServerProcess] = []
    try:
        for node_id, port in zip(NODE_IDS, ports, strict=True):
            config = directory / f"{layout}-{node_id}.toml"
            config.write_text(CONFIG + (f"[ring_nodes]\n{ring}\n" if hashing else ""))
            env = {"TIDINGS_NODE_ID": node_id}
            if hashing:
                env["TIDINGS_CLUSTER_SECRET"] = CLUSTER_SECRET
            broker = None if hashing else f"{REDIS_URL}?prefix={prefix}"
            log = directory / f"{layout}-{node_id}.log"
            argv = _node_argv(port, config, broker)
            nodes.append(start_server(node_id, argv, port, log, NODES_CPU, env=env))
        await asyncio.gather(*(wait_healthy(node, "/ready") for node in nodes))
        home = await owners(nodes, users) if hashing else [u % len(nodes) for u in range(users)]
        yield Cluster(nodes, home, prefix)
    finally:
        for node in nodes:
            node.stop()
        if prefix is not None:
            _delete_keys(prefix)


async def owners(nodes: list[ServerProcess], users: int) -> list[int]:
    """Each user's owner, as ``GET /route`` of the first node says (once per user)."""
    by_port = {node.port: index for index, node in enumerate(nodes)}
    found = []
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{nodes[0].port}") as client:
        for user in range(users):
            answer = await client.get("/route", params={"channel": f"user:{user}"})
            answer.raise_for_status()
            found.append(by_port[urlsplit(answer.json()["url"]).port or 80])
    return found


def _delete_keys(prefix: str) -> None:
    """Delete this run's keys from the machine's Redis (database 15, its own prefix)."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
    finally:
        client.close()


def redis_pid() -> int:
    """The process id of the machine's Redis (``INFO server``), to read its CPU time."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


# -- subscribers and the publisher -------------------------------------------------------------


async def connect_users(
    nodes: list[ServerProcess], home: list[int], collector: loadgen.Collector
) -> list[loadgen.Subscriber]:
    """One subscriber per user on its home node, authenticated as that user (a token of
    ``sub`` = its id, as a per-user namespace requires) and subscribed to ``user:<id>``;
    100 handshakes in flight. A subscriber refused (``moved``: not the owner) fails."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(100)
    expires = int(time.time()) + TOKEN_TTL_S

    async def open_one(user: int) -> loadgen.Subscriber:
        token = jwt.encode({"sub": str(user), "exp": expires}, JWT_SECRET, algorithm="HS256")
        node = home[user]
        request = loadgen.upgrade_request(HOST, nodes[node].port, f"/ws?token={token}")
        subscribe = b'{"id":1,"op":"subscribe","channel":"user:%d"}' % user
        async with gate:
            _, subscriber = await loop.create_connection(
                lambda: loadgen.Subscriber(user, collector, request, subscribe),
                HOST,
                nodes[node].port,
            )
            await subscriber.ready
            return subscriber

    async with asyncio.timeout(60):
        return list(await asyncio.gather(*(open_one(user) for user in range(len(home)))))


class Publisher:
    """Keep-alive connections to each node's ``POST /api/publish``, ``connections`` per
    node, each carrying one request at a time; ``post`` waits for a free one."""

    def __init__(self, pools: list[asyncio.Queue[loadgen.HttpPublisher]]) -> None:
        self._pools = pools
        self.answered = 0

    @classmethod
    async def open(cls, nodes: list[ServerProcess], connections: int) -> Publisher:
        pools: list[asyncio.Queue[loadgen.HttpPublisher]] = []
        for node in nodes:
            pool: asyncio.Queue[loadgen.HttpPublisher] = asyncio.Queue()
            for _ in range(connections):
                pool.put_nowait(await loadgen.HttpPublisher.open(HOST, node.port, "/api/publish"))
            pools.append(pool)
        return cls(pools)

    async def post(self, node: int, user: int, seq: int) -> None:
        """Publish ``seq`` to ``user:<user>`` through ``node``, stamped as it is sent."""
        connection = await self._pools[node].get()
        try:
            data = loadgen.stamped_data(seq)
            await connection.post(b'{"channel":"user:%d","data":%s}' % (user, data))
            self.answered += 1
        finally:
            self._pools[node].put_nowait(connection)

    async def close(self) -> None:
        for pool in self._pools:
            while not pool.empty():
                await pool.get_nowait().close()


async def publish_plan(
    publisher: Publisher, plan: Plan, entries: Sequence[int], seqs: range, rate: float
) -> None:
    """Post ``seqs`` on a fixed schedule (publication i at i / rate s), each through the
    node ``entries`` gives it; a publication does not wait for the previous answer."""
    start_s = time.monotonic()
    posts = []
    for index, seq in enumerate(seqs):
        delay_s = start_s + index / rate - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        posts.append(asyncio.create_task(publisher.post(entries[seq], plan.users[seq], seq)))
    await asyncio.gather(*posts)


# -- one run -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunFigures:
    """One layout's run: the fan-out benchmark's figures (``server`` = the three nodes,
    summed) and the Redis server's CPU per delivery (0 for the hashing layouts)."""

    figures: report.PhaseFigures
    redis_cpu_us_per_delivery: float
    misdelivered: int
    via_other_node_pct: float
    nodes_idle_pct: float = 0.0


@dataclass(frozen=True, slots=True)
class Readings:
    nodes_s: float
    generator_s: float
    redis_s: float
    nodes_core_s: float
    generator_core_s: float
    wall_s: float

    @classmethod
    def take(cls, nodes: Cluster, redis: int | None) -> Readings:
        return cls(
            nodes_s=nodes.cpu_s(),
            generator_s=time.process_time(),
            redis_s=process_cpu_s(redis) if redis is not None else 0.0,
            nodes_core_s=core_busy_s(NODES_CPU),
            generator_core_s=core_busy_s(GENERATOR_CPU),
            wall_s=time.monotonic(),
        )


def _percent(seconds: float, wall_s: float) -> float:
    return 100 * seconds / wall_s if wall_s > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Setup:
    """What the phases of one layout's run share."""

    nodes: Cluster
    publisher: Publisher
    collector: loadgen.Collector
    plan: Plan
    posted_to: list[int]  # by seq: the node each publication is posted to
    options: Options
    redis_pid: int | None


async def run_layout(layout: str, options: Options, plan: Plan, directory: Path) -> RunFigures:
    """Start ``layout``'s nodes, connect the users, warm up, measure, stop everything."""
    async with cluster(layout, directory, options.users) as nodes:
        collector = loadgen.Collector(options.users)
        subscribers = await connect_users(nodes.nodes, nodes.home, collector)
        publisher = await Publisher.open(nodes.nodes, options.connections)
        posted_to = (
            [nodes.home[user] for user in plan.users]  # the owner /route named
            if layout == "hashing-route"
            else plan.entries
        )
        redis = redis_pid() if layout == "redis" else None
        setup = Setup(nodes, publisher, collector, plan, posted_to, options, redis)
        try:
            idle_pct = await idle_cpu_pct(nodes)
            await phase(setup, range(0, options.warmup))
            measured = await phase(
                setup, range(options.warmup, options.warmup + options.publications)
            )
            return dataclasses.replace(measured, nodes_idle_pct=idle_pct)
        finally:
            for subscriber in subscribers:
                subscriber.close()
            await publisher.close()


async def idle_cpu_pct(nodes: Cluster) -> float:
    """What the three nodes spend doing nothing (pings, timers), in % of one core: part of
    every window's CPU time, so of the CPU per delivery at a low rate."""
    before_s, start_s = nodes.cpu_s(), time.monotonic()
    await asyncio.sleep(IDLE_SAMPLE_S)
    return _percent(nodes.cpu_s() - before_s, time.monotonic() - start_s)


async def phase(setup: Setup, seqs: range) -> RunFigures:
    """Publish ``seqs`` and wait for their deliveries; the figures of that window."""
    receipts = AddressedReceipts(setup.options.users, seqs, setup.plan.users)
    setup.collector.current = receipts
    before = Readings.take(setup.nodes, setup.redis_pid)
    start_ns = time.time_ns()
    await publish_plan(setup.publisher, setup.plan, setup.posted_to, seqs, setup.options.rate)
    published_ns = time.time_ns()
    await receipts.wait_complete(setup.options.drain_timeout_s)
    after = Readings.take(setup.nodes, setup.redis_pid)
    return _figures(
        setup, receipts, before=before, after=after, start_ns=start_ns, published_ns=published_ns
    )


def _figures(
    setup: Setup,
    receipts: AddressedReceipts,
    *,
    before: Readings,
    after: Readings,
    start_ns: int,
    published_ns: int,
) -> RunFigures:
    wall_s = after.wall_s - before.wall_s
    delivered = max(1, receipts.received)
    latencies = sorted(receipts.latencies_ns)
    last_ns = max(receipts.last_ns, start_ns + 1)
    nodes_s = after.nodes_s - before.nodes_s
    generator_s = after.generator_s - before.generator_s
    seqs = range(receipts.first_seq, receipts.first_seq + receipts.count)
    home, users = setup.nodes.home, setup.plan.users
    elsewhere = sum(setup.posted_to[seq] != home[users[seq]] for seq in seqs)
    figures = report.PhaseFigures(
        expected=receipts.expected,
        deliveries=receipts.received,
        duplicates=receipts.duplicates,
        deliveries_per_s=receipts.received / ((last_ns - start_ns) / 1e9),
        publications_per_s=receipts.count / max(1e-9, (published_ns - start_ns) / 1e9),
        p50_ms=report.percentile_ms(latencies, 0.50),
        p99_ms=report.percentile_ms(latencies, 0.99),
        server_cpu_us_per_delivery=1e6 * nodes_s / delivered,
        server_cpu_pct=_percent(nodes_s, wall_s),
        generator_cpu_pct=_percent(generator_s, wall_s),
        generator_cpu_us_per_delivery=1e6 * generator_s / delivered,
        server_core_other_pct=max(
            0.0, _percent(after.nodes_core_s - before.nodes_core_s - nodes_s, wall_s)
        ),
        generator_core_other_pct=max(
            0.0,
            _percent(after.generator_core_s - before.generator_core_s - generator_s, wall_s),
        ),
    )
    return RunFigures(
        figures=figures,
        redis_cpu_us_per_delivery=1e6 * (after.redis_s - before.redis_s) / delivered,
        misdelivered=receipts.misdelivered,
        via_other_node_pct=100 * elsewhere / max(1, receipts.count),
    )


async def benchmark(options: Options) -> dict[str, list[RunFigures]]:
    """Every layout ``options.runs`` times, the first layout rotating between runs."""
    plan = Plan.draw(options)
    results: dict[str, list[RunFigures]] = {layout: [] for layout in options.layouts}
    with tempfile.TemporaryDirectory(prefix="tidings-hashing-") as temporary:
        for run in range(options.runs):
            shift = run % len(options.layouts)
            for layout in options.layouts[shift:] + options.layouts[:shift]:
                await wait_for_quiet_cores(options.quiet_wait_s)
                directory = Path(temporary) / f"{run}"
                directory.mkdir(exist_ok=True)
                figures = await run_layout(layout, options, plan, directory)
                results[layout].append(figures)
                _print_progress(run, layout, figures)
    return results


def _print_progress(run: int, layout: str, measured: RunFigures) -> None:
    f = measured.figures
    redis_part = (
        f", Redis {measured.redis_cpu_us_per_delivery:.0f} µs/delivery" if layout == "redis" else ""
    )
    print(
        f"run {run + 1} {layout}: p50 {f.p50_ms:.2f} ms, p99 {f.p99_ms:.2f} ms, "
        f"nodes {f.server_cpu_us_per_delivery:.0f} µs/delivery{redis_part}, "
        f"{f.publications_per_s:.0f} pub/s, missing {f.missing}, "
        f"others on the nodes' core {f.server_core_other_pct:.0f}%",
        flush=True,
    )


# -- tables and RESULTS.md ---------------------------------------------------------------------

Col = report.Column[RunFigures]
REDIS_CPU_TITLE: Final = "Redis CPU µs/delivery"
FIGURES: Final = (
    Col("latency p50 ms", lambda r: r.figures.p50_ms, ".2f"),
    Col("latency p99 ms", lambda r: r.figures.p99_ms, ".2f"),
    Col("nodes' CPU µs/delivery (3 summed)", lambda r: r.figures.server_cpu_us_per_delivery, ".0f"),
    Col(REDIS_CPU_TITLE, lambda r: r.redis_cpu_us_per_delivery, ".0f"),
    Col("posted to another node %", lambda r: r.via_other_node_pct, ".0f"),
)
CONDITIONS: Final = (
    Col("publications/s", lambda r: r.figures.publications_per_s, ",.1f"),
    Col("nodes' CPU % (3 summed)", lambda r: r.figures.server_cpu_pct, ".0f"),
    Col("nodes' CPU % idle before (3 summed)", lambda r: r.nodes_idle_pct, ".1f"),
    Col("generator CPU %", lambda r: r.figures.generator_cpu_pct, ".0f"),
    Col("others on the nodes' core %", lambda r: r.figures.server_core_other_pct, ".0f"),
    Col("others on generator core %", lambda r: r.figures.generator_core_other_pct, ".0f"),
)


def table(results: dict[str, list[RunFigures]], columns: Sequence[Col], *, missing: bool) -> str:
    """One row per layout, each figure over the runs (median, min–max)."""
    titles = ["layout", *(column.title for column in columns)]
    rows = []
    for layout, runs in results.items():
        if not runs:
            continue
        cells = [layout, *report.spread_cells(runs, columns)]
        if layout != "redis":  # no Redis in the hashing layouts: a dash, not a 0
            cells = [
                "–" if title == REDIS_CPU_TITLE else cell
                for title, cell in zip(titles, cells, strict=True)
            ]
        if missing:
            lost = sum(r.figures.missing for r in runs)
            extra = sum(r.figures.duplicates + r.misdelivered for r in runs)
            cells.append(f"{lost:,} / {extra:,} of {sum(r.figures.expected for r in runs):,}")
        rows.append(cells)
    return report.markdown_table(
        titles + (["missing / repeated or misdelivered"] if missing else []), rows
    )


def notes(results: dict[str, list[RunFigures]]) -> list[str]:
    """``report.warnings`` over the layouts, plus deliveries to the wrong subscriber."""
    found = report.warnings(
        {layout: {PHASE: [r.figures for r in runs]} for layout, runs in results.items() if runs}
    )
    found += [
        f"{layout}: publications were delivered to a subscriber they were not addressed to"
        for layout, runs in results.items()
        if any(r.misdelivered for r in runs)
    ]
    return found


def section(
    options: Options,
    results: dict[str, list[RunFigures]],
    found: list[str],
    environment: list[tuple[str, str]],
) -> str:
    """The ``# Hashing against Redis pub/sub`` section of RESULTS.md."""
    described = "\n".join(f"- {name}: {value}" for name, value in environment)
    noted = "\n".join(f"- {note}" for note in found) or "- none"
    return (
        f"{RESULTS_HEADING}\n\n"
        "Written by `benchmarks/hashing.py`; its docstring and README.md say what each "
        "figure means. Each cell is the median of the runs with the minimum and maximum "
        "in brackets.\n\n"
        f"{report.provenance()}\n\n"
        f"Workload: 3 nodes, {options.users:,} users with one WebSocket subscriber each "
        f"(`user:<id>`), {options.publications:,} publications at {options.rate:g}/s "
        f"after {options.warmup:,} unmeasured ones, each to one user drawn at random "
        f"(seed {options.seed}), ~{loadgen.PAYLOAD_BYTES}-byte data, "
        f"{options.connections} keep-alive publishing connections per node; "
        f"{options.runs} runs per layout. `hashing`: static ring, memory brokers, posted "
        "to a random node (forwarded to the owner unless it is the owner); "
        "`hashing-route`: posted to the owner `GET /route` named; `redis`: the machine's "
        "Redis 7 at 127.0.0.1:6379, subscriber of user u on node u mod 3, posted to a "
        f"random node. The 3 nodes on CPU {NODES_CPU}, the generator on CPU "
        f"{GENERATOR_CPU}, Redis unpinned, loopback.\n\n"
        f"{table(results, FIGURES, missing=True)}\n\n## Conditions (hashing)\n\n"
        f"{table(results, CONDITIONS, missing=False)}\n\n## Warnings (hashing)\n\n{noted}\n\n"
        f"## Machine (hashing)\n\n{described}\n"
    )


def parse_options(argv: list[str] | None = None) -> Options:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--users", type=int, help="users, one subscriber each (default 300)")
    add("--publications", type=int, help="measured publications per run (default 2000)")
    add("--warmup", type=int, help="unmeasured publications first (default 200)")
    add("--rate", type=float, help="publications per second (default 200)")
    add("--connections", type=int, default=4, help="publishing connections per node (4)")
    add("--runs", type=int, help="runs per layout (default 3)")
    add("--layouts", default=",".join(LAYOUTS), help="comma-separated subset")
    add("--drain-timeout", type=float, default=10.0, help="s to wait for late deliveries")
    add("--quiet-wait", type=float, help="s to wait at most for quiet cores (default 10)")
    add("--seed", type=int, default=14, help="seed of the users and nodes drawn")
    add("--quick", action="store_true", help="1 run, 30 users, 100 publications; writes nothing")
    add("--results", help="where to write the section; '-' not to (default RESULTS.md)")
    args = parser.parse_args(argv)
    quick = args.quick
    layouts = tuple(name.strip() for name in args.layouts.split(",") if name.strip())
    if not layouts or set(layouts) - set(LAYOUTS):
        parser.error(f"--layouts takes {', '.join(LAYOUTS)}; got {args.layouts!r}")
    results = args.results or ("-" if quick else str(BENCHMARKS_DIR / "RESULTS.md"))

    def pick(given: float | None, normal: float, short: float) -> float:
        return given if given is not None else (short if quick else normal)

    options = Options(
        users=int(pick(args.users, 300, 30)),
        publications=int(pick(args.publications, 2000, 100)),
        warmup=int(pick(args.warmup, 200, 20)),
        rate=pick(args.rate, 200.0, 100.0),
        connections=args.connections,
        runs=int(pick(args.runs, 3, 1)),
        layouts=layouts,
        drain_timeout_s=args.drain_timeout,
        quiet_wait_s=pick(args.quiet_wait, 10.0, 0.0),
        seed=args.seed,
        results=None if results == "-" else Path(results),
    )
    if min(options.users, options.publications, options.connections, options.runs) < 1:
        parser.error("--users, --publications, --connections and --runs must be positive")
    if options.rate <= 0 or options.warmup < 0:
        parser.error("--rate must be positive and --warmup not negative")
    return options


def _check_redis() -> None:
    """Exit with one line if the machine's Redis does not answer (the ``redis`` layout
    needs it)."""
    try:
        redis_pid()
    except redis.RedisError as exc:
        sys.exit(
            f"no Redis at {REDIS_URL} ({exc}): start one, or leave the redis layout out "
            "(--layouts hashing,hashing-route)"
        )


def main() -> None:
    """Run every layout, print the tables, write the section of RESULTS.md."""
    options = parse_options()
    if "redis" in options.layouts:
        _check_redis()
    prepare_generator(GENERATOR_CPU)
    environment = report.machine((*report.LIBRARIES, "redis", "httpx"))
    results = uvloop.run(benchmark(options))
    found = notes(results)
    print(f"\n{table(results, FIGURES, missing=True)}\n")
    print(f"{table(results, CONDITIONS, missing=False)}\n")
    text = section(options, results, found, environment)
    report.warn_and_write(found, options.results, RESULTS_HEADING, text)


if __name__ == "__main__":
    main()
