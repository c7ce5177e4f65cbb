"""The polling arithmetic, measured: N clients short-polling every T seconds, straight at
the database (one SELECT per poll) or through tidings nodes, and what the database pays.

Every phase runs the same application: a ``messages`` table (``id bigserial``,
``room_id``, ``author``, ``body``, ``created_at``, index ``(room_id, id)``) into which
one writer inserts ``--rate`` rows per second spread over ``--rooms`` rooms. Then:

* **naive**: each client polls the database itself, once every ``--interval`` seconds:
  ``SELECT id, author, body, created_at FROM messages WHERE room_id = $1 AND id > $2
  ORDER BY id`` (autocommit, through a pool of ``--db-connections`` connections, as an
  application server would), keeping the last id it saw;
* **tidings**: ``tidings serve`` nodes (1 or 2) on the PostgreSQL broker, with a table
  source on ``messages`` (the trigger installed) publishing each row in
  ``room:<room_id>``; each client polls ``GET /poll?channel=room:<r>&cursor=...`` on
  its node (client *i* on node *i* mod *nodes*) every ``--interval`` seconds, over
  keep-alive connections.

Clients are spread evenly over the interval: ``clients / interval`` polls per second.
Measured over ``--window`` seconds, after one interval of warm-up (every client has
polled once):

* **DB statements/s**: ``pg_stat_statements`` calls (reset at the window's start;
  ``track_utility = off``, so BEGIN/COMMIT/LISTEN are not counted, only SELECT, INSERT,
  UPDATE, DELETE and function calls), and **DB commits/s** from
  ``pg_stat_database.xact_commit``;
* **DB CPU**: user + system time of the postmaster and all its children
  (``/proc/<pid>/stat``), in percent of one core;
* **node CPU** (tidings): the same for the ``tidings serve`` processes;
* **polls/s**: the polls completed in the window (what the generator achieved).

The cluster is the benchmark's own (``pg_cluster.py``): ``initdb`` as user ``postgres``
in a temporary directory, on a free port of 127.0.0.1, ``shared_preload_libraries =
pg_stat_statements``, stopped at the end; so its statistics hold this run alone.

Run (as root, for ``runuser``): ``.venv/bin/python benchmarks/polling.py`` writes the
``# Polling arithmetic`` section of RESULTS.md. ``--quick``: small and short, writes
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import quote

import psycopg

if __package__ in (None, ""):  # run as a script: make `tidings` and `benchmarks` importable
    sys.path[:0] = [str(Path(__file__).resolve().parent.parent / s) for s in ("src", "")]

from benchmarks.pg_cluster import Cluster, cpu_spent
from benchmarks.report import command, machine, markdown_table, write_section
from benchmarks.server_process import ServerProcess, free_port, start_server, wait_healthy

from tidings.sources.table_postgres import trigger_sql

RESULTS_PATH: Final = Path(__file__).resolve().parent / "RESULTS.md"
HEADING: Final = "# Polling arithmetic: the database per client, or tidings"
NAIVE_QUERY: Final = (
    "SELECT id, author, body, created_at FROM messages WHERE room_id = %s AND id > %s ORDER BY id"
)
CREATE_TABLE: Final = (
    "DROP TABLE IF EXISTS messages CASCADE;"
    "CREATE TABLE messages (id bigserial PRIMARY KEY, room_id integer NOT NULL,"
    " author text NOT NULL, body text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now());"
    "CREATE INDEX messages_room_id ON messages (room_id, id);"
)
TICK_S: Final = 0.005
TEXTBOOK_POLLS_PER_S: Final = 100_000  # 1M users polling every 10 s


@dataclass(frozen=True, slots=True)
class Options:
    clients: tuple[int, ...]
    interval_s: float
    window_s: float
    rooms: int
    rate: float
    db_connections: int
    http_connections: int
    quick: bool


def parse_options(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1000,10000", help="client counts, comma-separated")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    parser.add_argument("--window", type=float, default=20.0, help="measured seconds per phase")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=10.0, help="rows inserted per second")
    parser.add_argument("--db-connections", type=int, default=32)
    parser.add_argument("--http-connections", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="small and short; writes nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.interval, args.window = "100,500", 2.0, 4.0
    return Options(
        tuple(int(n) for n in args.clients.split(",")),
        args.interval,
        args.window,
        args.rooms,
        args.rate,
        args.db_connections,
        args.http_connections,
        args.quick,
    )


# -- load -------------------------------------------------------------------------------


@dataclass
class Counts:
    polls: int = 0
    errors: int = 0
    statuses: Counter[str] = field(default_factory=Counter)


async def insert_steadily(url: str, rate: float, rooms: int, stop: asyncio.Event) -> None:
    """The application: one writer inserting ``rate`` rows a second, round the rooms."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        began, made = time.monotonic(), 0
        while not stop.is_set():
            due = int((time.monotonic() - began) * rate)
            while made < due:
                await conn.execute(
                    "INSERT INTO messages (room_id, author, body) VALUES (%s, 'bench', %s)",
                    (made % rooms, f"message {made}"),
                )
                made += 1
            await asyncio.sleep(0.01)


async def schedule(
    queue: asyncio.Queue[int], clients: int, interval_s: float, stop: asyncio.Event
) -> None:
    """Hand out client indices at ``clients / interval_s`` per second, round-robin."""
    rate = clients / interval_s
    began, issued = time.monotonic(), 0
    while not stop.is_set():
        due = int((time.monotonic() - began) * rate)
        while issued < due:
            queue.put_nowait(issued % clients)
            issued += 1
        await asyncio.sleep(TICK_S)


async def naive_worker(
    url: str, queue: asyncio.Queue[int], last_ids: list[int], rooms: int, counts: Counts
) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while True:
            client = await queue.get()
            cursor = await conn.execute(NAIVE_QUERY, (client % rooms, last_ids[client]))
            rows = await cursor.fetchall()
            if rows:
                last_ids[client] = int(rows[-1][0])
            counts.polls += 1


async def http_worker(
    nodes: Sequence[int], queue: asyncio.Queue[int], cursors: list[str], rooms: int, counts: Counts
) -> None:
    """Polls over one keep-alive connection per node; a minimal HTTP/1.1 client, so that
    the generator's own cost stays small next to what it measures."""
    streams: dict[int, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
    while True:
        client = await queue.get()
        port = nodes[client % len(nodes)]
        if port not in streams:
            streams[port] = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = streams[port]
        target = f"/poll?channel=room:{client % rooms}"
        if cursors[client]:
            target += f"&cursor={quote(cursors[client], safe='')}"
        try:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            fields = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                fields[name.lower()] = value.strip()
            body = await reader.readexactly(int(fields.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError):
            counts.errors += 1
            counts.statuses["connection lost"] += 1
            del streams[port]
            writer.close()
            continue
        if fields.get("connection", "").lower() == "close":
            del streams[port]
            writer.close()
        status = head[0].split(" ", 2)[1]
        if status != "200":
            counts.errors += 1
            counts.statuses[f"{status} {body[:120]!r}"] += 1
            continue
        cursors[client] = fields.get("etag", "").strip('"')
        counts.polls += 1


# -- phases -----------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    clients: int
    nodes: int  # 0: naive, straight at the database
    polls_per_s: float = 0.0
    statements_per_s: float = 0.0
    commits_per_s: float = 0.0
    db_cpu_pct: float = 0.0
    node_cpu_pct: float = 0.0
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    top: list[tuple[float, str]] = field(default_factory=list)


async def db_statements(url: str) -> tuple[float, float]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements "
            "WHERE query NOT ILIKE '%pg_stat%'"
        )
        calls = await cursor.fetchone()
        cursor = await conn.execute("SELECT sum(xact_commit) FROM pg_stat_database")
        commits = await cursor.fetchone()
        assert calls is not None
        assert commits is not None
        return float(calls[0]), float(commits[0])


async def top_statements(url: str, window_s: float) -> list[tuple[float, str]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(
            "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 90) "
            "FROM pg_stat_statements WHERE query NOT ILIKE '%pg_stat%' "
            "ORDER BY calls DESC LIMIT 5"
        )
        return [(float(calls) / window_s, str(text)) for calls, text in await cursor.fetchall()]


async def start_nodes(url: str, count: int, scratch: Path, number: int) -> list[ServerProcess]:
    """Start ``count`` nodes on the broker schema ``bench_<number>``, each with the table
    source ``bench_<number>`` on ``messages`` (the trigger installed first)."""
    source = f"bench_{number}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(trigger_sql(source, "messages").encode())
    config = scratch / f"phase{number}.toml"
    config.write_text(
        "[namespaces.room]\nhistory_size = 100\n\n"
        f'[[sources]]\nname = "{source}"\nkind = "table"\ndsn = "{url}"\n'
        'table = "messages"\nchannel = "room:{room_id}"\n'
        'columns = ["id", "author", "body", "created_at"]\n'
    )
    every_core = set(range(os.cpu_count() or 1))
    nodes = []
    for index in range(count):
        port = free_port()
        argv = [sys.executable, "-m", "tidings", "serve", "--port", str(port)]
        argv += ["--config", str(config), "--broker", f"{url}?schema={source}"]
        log = scratch / f"node{number}.{index}.log"
        node = start_server(f"node{index}", [*argv, "--log-level", "warning"], port, log, 0)
        # Not pinned: the nodes, PostgreSQL and the generator share the machine's cores.
        os.sched_setaffinity(node.process.pid, every_core)
        nodes.append(node)
    for node in nodes:
        await wait_healthy(node, "/ready")
    return nodes


async def run_phase(
    cluster: Cluster, phase: Phase, options: Options, scratch: Path, number: int
) -> None:
    url = cluster.url
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(CREATE_TABLE.encode())
    nodes = await start_nodes(url, phase.nodes, scratch, number) if phase.nodes else []
    stop = asyncio.Event()
    queue: asyncio.Queue[int] = asyncio.Queue()
    counts = Counts()
    tasks = [asyncio.create_task(insert_steadily(url, options.rate, options.rooms, stop))]
    tasks.append(asyncio.create_task(schedule(queue, phase.clients, options.interval_s, stop)))
    if phase.nodes:
        cursors = [""] * phase.clients
        ports = [node.port for node in nodes]
        tasks += [
            asyncio.create_task(http_worker(ports, queue, cursors, options.rooms, counts))
            for _ in range(options.http_connections)
        ]
    else:
        last_ids = [0] * phase.clients
        tasks += [
            asyncio.create_task(naive_worker(url, queue, last_ids, options.rooms, counts))
            for _ in range(options.db_connections)
        ]
    try:
        await asyncio.sleep(options.interval_s)  # warm-up: every client has polled once
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute("SELECT pg_stat_statements_reset()")
        calls0, commits0 = await db_statements(url)
        db0, nodes0 = cluster.cpu(), [node.cpu_s() for node in nodes]
        polls0, errors0, began = counts.polls, counts.errors, time.monotonic()
        await asyncio.sleep(options.window_s)
        elapsed = time.monotonic() - began
        db1, nodes1 = cluster.cpu(), [node.cpu_s() for node in nodes]
        polls1, errors1 = counts.polls, counts.errors
        calls1, commits1 = await db_statements(url)
        phase.top = await top_statements(url, elapsed)
        for task in tasks:
            if task.done() and task.exception() is not None:
                raise RuntimeError(f"{phase.name}: a load task failed") from task.exception()
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for node in nodes:
            node.stop()
    phase.polls_per_s = (polls1 - polls0) / elapsed
    phase.errors = errors1 - errors0
    phase.statuses = dict(counts.statuses)
    phase.statements_per_s = (calls1 - calls0) / elapsed
    phase.commits_per_s = (commits1 - commits0) / elapsed
    phase.db_cpu_pct = 100 * cpu_spent(db0, db1) / elapsed
    phase.node_cpu_pct = 100 * sum(b - a for a, b in zip(nodes0, nodes1, strict=True)) / elapsed


def phases_of(options: Options) -> list[Phase]:
    found = [Phase(f"naive, {n:,} clients", n, 0) for n in options.clients]
    found.append(Phase(f"tidings 1 node, {options.clients[0]:,} clients", options.clients[0], 1))
    found += [Phase(f"tidings 2 nodes, {n:,} clients", n, 2) for n in options.clients]
    return found


# -- report -----------------------------------------------------------------------------


def report(phases: list[Phase], options: Options) -> str:
    rows = [
        [
            p.name,
            f"{p.clients / options.interval_s:,.0f}",
            f"{p.polls_per_s:,.0f}",
            f"{p.statements_per_s:,.1f}",
            f"{p.commits_per_s:,.1f}",
            f"{p.db_cpu_pct:.1f}",
            "-" if not p.nodes else f"{p.node_cpu_pct:.1f}",
        ]
        for p in phases
    ]
    table = markdown_table(
        [
            "phase",
            "polls/s asked",
            "polls/s done",
            "DB statements/s",
            "DB commits/s",
            "DB CPU % of a core",
            "nodes' CPU % of a core",
        ],
        rows,
    )
    naive = max((p for p in phases if not p.nodes), key=lambda p: p.clients)
    pulled = max((p for p in phases if p.nodes == 2), key=lambda p: p.clients)
    db_cpu_per_query_us = 1e6 * naive.db_cpu_pct / 100 / max(naive.statements_per_s, 1)
    node_cpu_per_poll_us = 1e6 * pulled.node_cpu_pct / 100 / max(pulled.polls_per_s, 1)
    extrapolation = (
        f"- **naive**: {TEXTBOOK_POLLS_PER_S:,} polls/s are {TEXTBOOK_POLLS_PER_S:,} SELECTs/s "
        f"at the database. Measured here: {db_cpu_per_query_us:.0f} µs of database CPU per "
        f"poll ({naive.name}), so about "
        f"{TEXTBOOK_POLLS_PER_S * db_cpu_per_query_us / 1e6:,.0f} cores of PostgreSQL busy "
        "with nothing but polls (before the connections they need: each poller's "
        "application server holds some).\n"
        f"- **tidings**: the database sees what it saw here, {pulled.statements_per_s:,.0f} "
        f"statements/s for {options.rate:g} publications/s and 2 nodes, whatever the "
        f"clients: the polls are answered from the nodes' memory. They cost the nodes "
        f"{node_cpu_per_poll_us:.0f} µs of CPU per poll ({pulled.name}), so "
        f"{TEXTBOOK_POLLS_PER_S:,} polls/s need about "
        f"{TEXTBOOK_POLLS_PER_S * node_cpu_per_poll_us / 1e6:,.0f} cores of tidings nodes, "
        "spread over as many nodes as wanted; each node adds a constant to the database "
        "(one LISTEN connection that hears every publication's notice, its upkeep), "
        "not a query per poll."
    )
    tops = []
    for p in phases:
        listed = "; ".join(f"{rate:,.1f}/s `{text}`" for rate, text in p.top[:4])
        tops.append(f"- {p.name}: {listed}")
    errors = [
        f"- {p.name}: {p.errors} polls failed in the window ({p.statuses})"
        for p in phases
        if p.errors
    ]
    environment = "\n".join(f"- {name}: {value}" for name, value in machine(("psycopg",)))
    return (
        f"{HEADING}\n\n"
        "Written by `benchmarks/polling.py` (its docstring says what each figure means). "
        f"{options.rate:g} rows/s inserted into `messages` over {options.rooms} rooms; each "
        f"client polls every {options.interval_s:g} s; {options.window_s:g} s measured per "
        "phase after one interval of warm-up. The machine was shared with other work at "
        "the time (other helpers' test runs): CPU figures are indicative.\n\n"
        f"{table}\n\n"
        "## What 1M users polling every 10 s would take (100k polls/s)\n\n"
        f"{extrapolation}\n\n"
        "## The statements the database ran most (per second, in the window)\n\n"
        + "\n".join(tops)
        + "\n\n## Warnings (polling)\n\n"
        + ("\n".join(errors) or "- none")
        + f"\n\n## Machine (polling)\n\n- command: `{command()}`\n"
        "- PostgreSQL: the benchmark's own cluster (initdb, defaults but "
        "`shared_preload_libraries = pg_stat_statements`, `track_utility = off`)\n"
        f"{environment}\n"
    )


async def main(options: Options) -> None:
    with tempfile.TemporaryDirectory(prefix="tidings-polling-") as scratch_name:
        scratch = Path(scratch_name)
        # Its own directory, for user postgres to own (the scratch one is root's, 0700).
        cluster = Cluster(Path(tempfile.mkdtemp(prefix="tidings-polling-pg-")))
        cluster.start()
        try:
            phases = phases_of(options)
            for number, phase in enumerate(phases):
                print(f"{phase.name} ...", file=sys.stderr, flush=True)
                await run_phase(cluster, phase, options, scratch, number)
                print(
                    f"  {phase.polls_per_s:,.0f} polls/s, {phase.statements_per_s:,.1f} "
                    f"statements/s, DB CPU {phase.db_cpu_pct:.1f}%, "
                    f"nodes {phase.node_cpu_pct:.1f}%",
                    file=sys.stderr,
                    flush=True,
                )
                if phase.statuses:
                    print(f"  failed polls: {phase.statuses}", file=sys.stderr, flush=True)
        finally:
            cluster.stop()
            shutil.rmtree(cluster.directory, ignore_errors=True)
    text = report(phases, options)
    print(text)
    if not options.quick:
        write_section(RESULTS_PATH, HEADING, text)


if __name__ == "__main__":
    asyncio.run(main(parse_options()))
