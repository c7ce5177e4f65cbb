"""Scaling a ring of tidings nodes under load, end to end: one command, real processes.

    .venv/bin/python benchmarks/ring_scaling.py [--subscribers 1000] [--rate 500]

An etcd of its own and three ``tidings serve`` nodes (``a``, ``b``, ``c``) on free
loopback ports, in the consistent-hashing mode (docs/modes/hashing.md); subscribers
spread over ``--channels`` channels ``doc:<n>`` and over WebSocket, SSE and polling
(``ring_subscribers.py``); a publisher at ``--rate`` publications per second through
the server API of each channel's owner (as the publisher believes it; a node that is
not the owner forwards). Then, each step followed by ``--settle`` seconds of traffic:

1. ``join``: node ``d`` starts and joins the ring (planned);
2. ``leave``: node ``a`` is sent SIGTERM: it leaves the ring and drains (planned);
3. ``kill``: node ``b`` is sent SIGKILL: its lease expires (``ring_ttl``) and its keys
   go to their next owners.

Then the publisher stops, the subscribers are given time to receive what is due,
and the report says, per step (``ring_ledger.py`` defines the terms): publications
acknowledged and refused; deliveries due and made; lost (silently: no
``recovered: false`` covers them); repeated; ``recovered: false`` heard; keys moved,
measured (``GET /route`` of every channel before and after) against what the ring and
modulo hashing compute; reconnects in the busiest second against the bound the nodes
promise (each moving node at most ``ring_move_rate`` + 1 a second for a join,
``drain_rate`` + 1 for a planned leave; none for a crash, where clients' own backoff
spreads them); and the time from the step until every subscriber was subscribed at
its channel's owner again.

Everything runs on 127.0.0.1 and is bounded in time (each wait has a deadline). The
end-to-end test ``tests/e2e/test_ring_scaling.py`` runs ``run_scenario`` and asserts
on its ``Report``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import random
import signal
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

if __package__ in (None, ""):  # run as a script: make `benchmarks` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.ring_ledger import (
    Ack,
    Tally,
    Window,
    excess_over_rate,
    max_in_any_second,
    window_of,
)
from benchmarks.ring_subscribers import Subscriber, host_port, read_body, read_head
from tests.support.etcd import etcd_server
from tests.support.server import ServerProcess, free_port, start_server

from tidings.core.ring import HashRing, ModuloHash, moved_keys

logger = logging.getLogger(__name__)

API_KEY: Final = "ring-scaling-api-key"
RING_PREFIX: Final = "/ring-scaling"
SECRET: Final = "ring-scaling-cluster-secret-of-32-bytes-or-more"
TRANSPORTS: Final = ("ws", "sse", "poll")
PUBLISHERS: Final = 16  # requests in flight at most: enough for the rate at a few ms each
CONVERGE_TIMEOUT_S: Final = 60.0
DELIVERY_TIMEOUT_S: Final = 15.0
SCENARIO_TIMEOUT_S: Final = 300.0  # the whole run, whatever hangs
CHECK_EVERY_S: Final = 0.05
ETCD_POLL_S: Final = 0.01
ROUTES_POLL_S: Final = 0.1
# A reconnect is timed when the subscriber reads its goodbye (plus the delay given),
# some milliseconds after the node sent it, and a loaded subscriber process reads some
# later than others, which bunches them: a count per window of 1 s can exceed what the
# nodes scheduled. So the bound is held in its cumulative form, which lateness cannot
# break (``ring_ledger.excess_over_rate``): from the moment the ring changed in etcd,
# never more reconnects than ``burst + rate * elapsed``, where each moving node adds
# its rate and 1 to the burst. The busiest 1 s is reported beside it.


@dataclass(frozen=True)
class Settings:
    """The scenario's size and the nodes' settings."""

    subscribers: int = 1000
    channels: int = 500
    rate: float = 500.0
    settle_s: float = 3.0
    move_rate: int = 50  # ring_move_rate, and drain_rate
    ring_ttl_s: int = 2
    seed: int = 1


@dataclass
class Step:
    """What one step did and cost."""

    name: str
    start_s: float
    nodes_before: tuple[str, ...]
    nodes_after: tuple[str, ...]
    bound: int | None = None  # reconnects in any second the moving nodes promise (sum)
    moving_nodes: int = 0
    ring_changed_s: float | None = None  # before this, the ring in etcd was the old one
    converge_s: float | None = None
    action_s: float = 0.0  # how long the action itself took (a node's start)
    moved_measured: int = 0
    moved_ring: int = 0
    moved_modulo: int = 0
    routes_match_ring: bool = True  # every node's /route came to answer the new ring
    routes_s: float = 0.0  # when it did (or gave up), since the step began
    acknowledged: int = 0
    refused: int = 0
    due: int = 0
    delivered: int = 0
    lost: int = 0
    covered: int = 0  # missed under a recovered: false heard in this step
    repeated: int = 0
    gaps: int = 0
    reconnects: int = 0
    max_reconnects_per_s: int = 0  # in any 1 s of the subscribers' clock
    ahead_of_bound: float = 0.0  # most reconnects ever ahead of it since the ring changed
    lost_channels: set[str] = field(default_factory=set)


@dataclass
class Report:
    """The scenario's figures, one ``Step`` each, in order."""

    settings: Settings
    steps: list[Step]
    undelivered_at_end: int  # (subscriber, publication) pairs still missing at the end

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def lines(self) -> list[str]:
        """The report as a table (Markdown)."""
        s = self.settings
        rows = [
            f"{s.subscribers} subscribers (ws/sse/poll) on {s.channels} channels, "
            f"{s.rate:.0f} publications/s, ring_move_rate = drain_rate = {s.move_rate}, "
            f"ring_ttl = {s.ring_ttl_s} s",
            "",
            "| step | nodes | acked | refused | due | delivered | lost | repeated "
            "| recovered:false (publications it covered) | keys moved (ring / modulo) "
            "| reconnects max/s (bound) "
            "| converged in (node start; /route agreed) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for step in self.steps:
            nodes = f"{len(step.nodes_before)} → {len(step.nodes_after)}"
            moved = f"{step.moved_measured} ({step.moved_ring} / {step.moved_modulo})" + (
                "" if step.routes_match_ring else " ≠ ring!"
            )
            bound = "—" if step.bound is None else str(step.bound)
            converged = "—" if step.converge_s is None else f"{step.converge_s:.2f} s"
            if step.action_s:
                converged += f" (start {step.action_s:.2f} s)"
            if step.routes_s:
                converged += f"; /route {step.routes_s:.2f} s"
            rows.append(
                f"| {step.name} | {nodes} | {step.acknowledged} | {step.refused} | {step.due} "
                f"| {step.delivered} | {step.lost} | {step.repeated} "
                f"| {step.gaps} ({step.covered}) | {moved} "
                f"| {step.max_reconnects_per_s} of {step.reconnects} ({bound}; "
                f"{step.ahead_of_bound:+.0f}) | {converged} |"
            )
        rows.append("")
        rows.append(
            "reconnects: most in any 1 s of all in the step (the bound per second; the most "
            "ever ahead of the bound's cumulative schedule since the ring changed: <= 0 holds)"
        )
        rows.append(f"still undelivered at the end (lost included): {self.undelivered_at_end}")
        return rows


class Publisher:
    """Publishes ``{"s": seq}`` to channel ``seq % channels`` at a fixed rate, through the
    server API of the node it believes owns the channel; records what is acknowledged."""

    def __init__(self, settings: Settings, channels: list[str]) -> None:
        self._settings = settings
        self._channels = channels
        self.urls: dict[str, str] = {}  # node id -> base URL, as the publisher believes
        self.ring = HashRing(["-"])
        self.acks: list[Ack] = []
        self.refusals: list[float] = []
        self._seq = 0
        self._start_s = 0.0

    def believe(self, urls: dict[str, str]) -> None:
        self.urls = dict(urls)
        self.ring = HashRing(urls)

    async def run(self) -> None:
        """Publish until cancelled."""
        self._start_s = time.monotonic()
        await asyncio.gather(*(self._worker() for _ in range(PUBLISHERS)))

    async def _worker(self) -> None:
        connections: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        try:
            while True:
                seq = self._seq
                self._seq += 1
                delay_s = self._start_s + seq / self._settings.rate - time.monotonic()
                if delay_s > 0:
                    await asyncio.sleep(delay_s)
                channel = self._channels[seq % len(self._channels)]
                url = self.urls[self.ring.owner(channel)]
                sent_s = time.monotonic()
                try:
                    answer = await self._post(connections, url, channel, seq)
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                    dropped = connections.pop(url, None)
                    if dropped is not None:
                        # Closed, not left to the collector: an unclosed StreamWriter
                        # warns when collected, which the tests take as an error.
                        dropped[1].close()
                    answer = None
                if answer is None:
                    self.refusals.append(sent_s)
                else:
                    epoch, offset = answer
                    self.acks.append(Ack(seq, channel, epoch, offset, sent_s))
        finally:
            for _, writer in connections.values():
                writer.close()

    async def _post(
        self,
        connections: dict[str, tuple[asyncio.StreamReader, asyncio.StreamWriter]],
        url: str,
        channel: str,
        seq: int,
    ) -> tuple[str, int] | None:
        if url not in connections:
            host, port = host_port(url)
            connections[url] = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        reader, writer = connections[url]
        body = json.dumps({"channel": channel, "data": {"s": seq}}).encode()
        host, port = host_port(url)
        writer.write(
            b"POST /api/publish HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (host.encode(), port, API_KEY.encode(), len(body), body)
        )
        status, headers = await asyncio.wait_for(read_head(reader), 10.0)
        answer = await read_body(reader, headers)
        if headers.get("connection", "").lower() == "close":
            connections.pop(url)
            writer.close()
        if status != 200:
            return None
        result = json.loads(answer)
        return str(result["epoch"]), int(result["offset"])


class Cluster:
    """etcd and the nodes, by id."""

    def __init__(self, settings: Settings, etcd_url: str) -> None:
        self.settings = settings
        self.etcd_url = etcd_url
        self.servers: dict[str, ServerProcess] = {}
        self.urls: dict[str, str] = {}  # the nodes alive (as the scenario made them)

    def start(self, node: str) -> ServerProcess:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        s = self.settings
        env = {
            "TIDINGS_API_KEY": API_KEY,
            "TIDINGS_CLUSTER_SECRET": SECRET,
            "TIDINGS_NODE_ID": node,
            "TIDINGS_PUBLIC_URL": url,
            "TIDINGS_RING_ETCD": self.etcd_url,
            "TIDINGS_RING_PREFIX": RING_PREFIX,
            "TIDINGS_RING_TTL": f"{s.ring_ttl_s}s",
            "TIDINGS_RING_MOVE_RATE": str(s.move_rate),
            "TIDINGS_DRAIN_RATE": str(s.move_rate),
            "TIDINGS_SHUTDOWN_TIMEOUT": "20s",
            "TIDINGS_NAMESPACES__DOC__HISTORY_SIZE": "1000",
        }
        server = start_server(port=port, env=env)
        self.servers[node] = server
        self.urls[node] = url
        return server

    def kill_all(self) -> None:
        for server in self.servers.values():
            server.kill()


async def routes(urls: dict[str, str], channels: list[str]) -> dict[str, str]:
    """Where a node of ``urls`` (the first) says each channel is served."""
    url = next(iter(urls.values()))
    host, port = host_port(url)
    reader, writer = await asyncio.open_connection(host, port)
    answers: dict[str, str] = {}
    try:
        for channel in channels:
            writer.write(
                b"GET /route?channel=%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                % (channel.encode(), host.encode(), port)
            )
            status, headers = await asyncio.wait_for(read_head(reader), 10.0)
            body = await read_body(reader, headers)
            if status != 200:
                raise RuntimeError(f"/route answered {status}: {body!r}")
            answers[channel] = json.loads(body)["url"]
    finally:
        writer.close()
    return answers


async def converge(subscribers: list[Subscriber], urls: dict[str, str], start_s: float) -> float:
    """Wait until every subscriber is subscribed at its channel's owner by the ring of
    ``urls``; return the seconds since ``start_s``."""
    ring = HashRing(urls)
    owner = {channel: urls[ring.owner(channel)] for channel in {s.channel for s in subscribers}}
    deadline = start_s + CONVERGE_TIMEOUT_S
    while not all(s.live and s.node == owner[s.channel] for s in subscribers):
        if time.monotonic() > deadline:
            astray = [s for s in subscribers if not (s.live and s.node == owner[s.channel])]
            where = ", ".join(
                f"{s.transport} {s.channel} at {s.node} (live: {s.live}; owner {owner[s.channel]})"
                for s in astray[:5]
            )
            raise TimeoutError(f"{len(astray)} subscribers not at their owner: {where}")
        await asyncio.sleep(CHECK_EVERY_S)
    logger.info("converged in %.2f s", time.monotonic() - start_s)
    return time.monotonic() - start_s


async def cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel ``tasks`` and wait until they are done, cancelling again those still
    running: on Python 3.11 ``asyncio.wait_for`` can swallow a cancellation that
    arrives as its operation completes, and a subscriber's loop would then go on."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            logger.warning("a task ended with %r", task.exception())


def _acks_by_channel(acks: list[Ack]) -> dict[str, list[Ack]]:
    by_channel: dict[str, list[Ack]] = defaultdict(list)
    for ack in acks:
        by_channel[ack.channel].append(ack)
    return by_channel


async def _deliveries_settled(tallies: list[Tally], acks: list[Ack]) -> int:
    """Wait (bounded) until no subscriber misses an acknowledged publication it was not
    told about; return how many (subscriber, publication) pairs still miss one."""
    by_channel = _acks_by_channel(acks)
    deadline = time.monotonic() + DELIVERY_TIMEOUT_S
    while True:
        missing = sum(t.missing(by_channel[t.channel]) for t in tallies)
        if missing == 0 or time.monotonic() > deadline:
            return missing
        await asyncio.sleep(0.5)


def account(steps: list[Step], end_s: float, publisher: Publisher, tallies: list[Tally]) -> None:
    """Fill each step's counts from the books (``ring_ledger``)."""
    windows = [
        Window(step.name, step.start_s, steps[i + 1].start_s if i + 1 < len(steps) else end_s)
        for i, step in enumerate(steps)
    ]
    by_name = {step.name: step for step in steps}

    def step_at(t_s: float) -> Step | None:
        window = window_of(windows, t_s)
        return None if window is None else by_name[window.name]

    for ack in publisher.acks:
        if (step := step_at(ack.sent_s)) is not None:
            step.acknowledged += 1
    for t_s in publisher.refusals:
        if (step := step_at(t_s)) is not None:
            step.refused += 1
    by_channel = _acks_by_channel(publisher.acks)
    reconnects: dict[str, list[float]] = defaultdict(list)
    for tally in tallies:
        acks = by_channel[tally.channel]
        for ack in acks:
            if (step := step_at(ack.sent_s)) is not None:
                step.due += 1
                step.delivered += ack.seq in tally.seqs
        for ack in tally.lost(acks):
            if (step := step_at(ack.sent_s)) is not None:
                step.lost += 1
                step.lost_channels.add(tally.channel)
        for _, gap in tally.covered(acks):
            if (step := step_at(gap.at_s)) is not None:
                step.covered += 1
        for t_s in tally.repeats:
            if (step := step_at(t_s)) is not None:
                step.repeated += 1
        for gap in tally.gaps:
            if (step := step_at(gap.at_s)) is not None:
                step.gaps += 1
        for t_s in tally.reconnects:
            if (step := step_at(t_s)) is not None:
                reconnects[step.name].append(t_s)
    for step in steps:
        step.reconnects = len(reconnects[step.name])
        step.max_reconnects_per_s = max_in_any_second(reconnects[step.name])
        if step.bound is not None and step.ring_changed_s is not None:
            step.ahead_of_bound = excess_over_rate(
                reconnects[step.name],
                step.ring_changed_s,
                step.bound - step.moving_nodes,
                step.moving_nodes,
            )


async def _measure_moves(
    step: Step, before: dict[str, str], urls: dict[str, str], channels: list[str]
) -> dict[str, str]:
    """Wait (bounded) until ``GET /route`` on every node answers the ring of ``urls`` for
    every channel; count the channels whose route changed, and what the ring and
    modulo hashing compute. Routes that never agree leave ``routes_match_ring`` false
    and are counted as the first node answered them last."""
    ring = HashRing(step.nodes_after)
    expected = {channel: urls[ring.owner(channel)] for channel in channels}
    deadline = step.start_s + CONVERGE_TIMEOUT_S
    while True:
        answers = [await routes({node: url}, channels) for node, url in urls.items()]
        step.routes_match_ring = all(answer == expected for answer in answers)
        if step.routes_match_ring or time.monotonic() > deadline:
            break
        await asyncio.sleep(ROUTES_POLL_S)
    step.routes_s = time.monotonic() - step.start_s
    after = answers[0]
    step.moved_measured = sum(before[c] != after[c] for c in channels)
    old, new = step.nodes_before, step.nodes_after
    step.moved_ring = len(moved_keys(HashRing(old), HashRing(new), channels))
    step.moved_modulo = len(moved_keys(ModuloHash(old), ModuloHash(new), channels))
    return after


async def run_scenario(settings: Settings, directory: Path) -> Report:
    """Run the whole scenario in ``directory`` (etcd's data); return its report."""
    with etcd_server(directory) as etcd_url:
        cluster = Cluster(settings, etcd_url)
        try:
            async with asyncio.timeout(SCENARIO_TIMEOUT_S):
                return await Scenario(settings, cluster).run()
        finally:
            cluster.kill_all()


class Scenario:
    """The steps, in order, against one cluster."""

    def __init__(self, settings: Settings, cluster: Cluster) -> None:
        self.settings = settings
        self.cluster = cluster
        self.channels = [f"doc:{n}" for n in range(settings.channels)]
        self.seeds: list[str] = []  # every node's URL, as they start: the subscribers' list
        self.subscribers: list[Subscriber] = []
        self.publisher = Publisher(settings, self.channels)
        self.steps: list[Step] = []
        self.routed: dict[str, str] = {}  # channel -> owner URL, by /route

    @property
    def urls(self) -> dict[str, str]:
        return dict(sorted(self.cluster.urls.items()))

    async def run(self) -> Report:
        await asyncio.gather(*(asyncio.to_thread(self.cluster.start, node) for node in "abc"))
        self.seeds.extend(self.urls.values())
        rng = random.Random(self.settings.seed)
        self.subscribers = [
            Subscriber(self.channels[i % len(self.channels)], TRANSPORTS[i % 3], self.seeds, i, rng)
            for i in range(self.settings.subscribers)
        ]
        tasks = [asyncio.create_task(s.run()) for s in self.subscribers]
        try:
            async with asyncio.timeout(CONVERGE_TIMEOUT_S):
                await asyncio.gather(*(s.subscribed.wait() for s in self.subscribers))
            logger.info("%d subscribers subscribed", len(self.subscribers))
            await converge(self.subscribers, self.urls, time.monotonic())
            self.routed = await routes(self.urls, self.channels)
            self.publisher.believe(self.urls)
            publishing = asyncio.create_task(self.publisher.run())
            try:
                nodes = tuple(self.urls)
                self.steps.append(Step("steady", time.monotonic(), nodes, nodes))
                await asyncio.sleep(self.settings.settle_s)
                await self._join("d")
                await self._leave("a")
                await self._kill("b")
            finally:
                logger.info("publisher stops; waiting for the deliveries due")
                await cancel_all([publishing])
            end_s = time.monotonic()
            tallies = [s.tally for s in self.subscribers]
            undelivered = await _deliveries_settled(tallies, self.publisher.acks)
        finally:
            await cancel_all(tasks)
        account(self.steps, end_s, self.publisher, tallies)
        return Report(self.settings, self.steps, undelivered)

    def _begin(self, name: str, after: tuple[str, ...]) -> Step:
        logger.info("%s: nodes %s -> %s", name, ",".join(self.urls), ",".join(after))
        step = Step(name, time.monotonic(), tuple(self.urls), after)
        self.steps.append(step)
        return step

    async def _end(self, step: Step) -> None:
        """Wait until every subscriber is at its owner; measure the keys moved; settle."""
        self.publisher.believe(self.urls)
        step.converge_s = await converge(self.subscribers, self.urls, step.start_s)
        self.routed = await _measure_moves(step, self.routed, self.urls, self.channels)
        await asyncio.sleep(self.settings.settle_s)

    async def _ring_revision(self, client: httpx.AsyncClient) -> str:
        """The revision at which the ring in etcd last changed."""
        key = base64.b64encode(f"{RING_PREFIX}/ring".encode()).decode()
        answer = await client.post(f"{self.cluster.etcd_url}/v3/kv/range", json={"key": key})
        return str(answer.json()["kvs"][0]["mod_revision"])

    async def _watch_ring(self) -> asyncio.Task[float]:
        """Read the ring's revision in etcd now; return a task that polls until it
        changes and gives the moment the last read that still found the old revision
        was sent: the change came after etcd served that read, so no node can have
        acted on the new ring before that moment."""
        client = httpx.AsyncClient()
        old_read_s = time.monotonic()
        revision = await self._ring_revision(client)

        async def changed() -> float:
            nonlocal old_read_s
            try:
                deadline = time.monotonic() + CONVERGE_TIMEOUT_S
                while time.monotonic() < deadline:
                    await asyncio.sleep(ETCD_POLL_S)
                    read_s = time.monotonic()
                    if await self._ring_revision(client) != revision:
                        return old_read_s
                    old_read_s = read_s
            finally:
                await client.aclose()
            raise TimeoutError(f"the ring in etcd stayed at revision {revision}")

        return asyncio.create_task(changed())

    async def _join(self, node: str) -> None:
        """A node joins (planned): the nodes that lose keys move their clients to it."""
        step = self._begin("join", (*self.urls, node))
        changed = await self._watch_ring()
        await asyncio.to_thread(self.cluster.start, node)
        step.action_s = time.monotonic() - step.start_s
        step.ring_changed_s = await changed
        logger.info(
            "node %s listening after %.2f s; the ring changed in etcd after %.2f s",
            node,
            step.action_s,
            step.ring_changed_s - step.start_s,
        )
        self.seeds.append(self.cluster.urls[node])
        old, new = HashRing(step.nodes_before), HashRing(step.nodes_after)
        losing = {old.owner(channel) for channel in moved_keys(old, new, self.channels)}
        step.moving_nodes = len(losing)
        step.bound = len(losing) * (self.settings.move_rate + 1)
        await self._end(step)

    async def _leave(self, node: str) -> None:
        """A node leaves (planned): SIGTERM; it leaves the ring, then drains."""
        step = self._begin("leave", tuple(n for n in self.urls if n != node))
        changed = await self._watch_ring()
        stopping = asyncio.create_task(
            asyncio.to_thread(self.cluster.servers[node].stop, signal.SIGTERM)
        )
        del self.cluster.urls[node]
        step.moving_nodes = 1
        step.bound = self.settings.move_rate + 1  # the drain's own rate (drain_rate)
        step.ring_changed_s = await changed
        await self._end(step)
        await stopping

    async def _kill(self, node: str) -> None:
        """A node is killed: no goodbye; its lease expires after ``ring_ttl``."""
        step = self._begin("kill", tuple(n for n in self.urls if n != node))
        self.cluster.servers[node].kill()
        del self.cluster.urls[node]
        await self._end(step)


def _arguments() -> Settings:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=Settings.subscribers)
    parser.add_argument("--channels", type=int, default=Settings.channels)
    parser.add_argument("--rate", type=float, default=Settings.rate)
    parser.add_argument("--settle", type=float, default=Settings.settle_s)
    parser.add_argument("--move-rate", type=int, default=Settings.move_rate)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    args = parser.parse_args()
    return Settings(
        subscribers=args.subscribers,
        channels=args.channels,
        rate=args.rate,
        settle_s=args.settle,
        move_rate=args.move_rate,
        seed=args.seed,
    )


@contextlib.contextmanager
def _directory() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ring-scaling-") as name:
        yield Path(name)


def main() -> None:
    settings = _arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with _directory() as directory:
        began = time.monotonic()
        report = asyncio.run(run_scenario(settings, directory))
    for line in report.lines():
        print(line)
    print(f"\n(the scenario took {time.monotonic() - began:.0f} s)")


if __name__ == "__main__":
    main()
