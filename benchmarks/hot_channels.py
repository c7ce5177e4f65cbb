"""Hot-channel tracking cost: the hub's fan-out with ``hot_channels`` off, counting every
publication, and sampling (the default), in one run.

What it measures: a node's hub on the memory broker, publishing through ``Hub.publish``
(the path of the server API) to subscribers that queue each publication's WebSocket
text as a connection's outbound buffer would. Per workload it reports the fan-out's CPU
time per publication (the thread's CPU clock around exactly the hub's fan-out, as the
broker calls it: unlike wall time, not inflated when the machine's other processes
take the core) under three settings: tracking off; ``exact`` (``hot_channel_sampling =
1``: every publication counted); ``sampled`` (the default: past each window's first
publications, one in ``hot_channel_sampling`` of those with fewer than
``SAMPLED_BELOW`` deliveries counted, core/channel_heat.py). For each setting on, the
difference as a share of fan-out, and the cost of the counting alone
(``ChannelHeat.record``, which the hub inlines) over the same stream of channels (timed
in a tight loop, caches warm: a lower bound, and the precise figure when the difference
drowns in the spread of the rounds). A stream is one window: the window's close (once
per ``hot_channel_window``, not per publication) is not in these figures.

Workloads: ``celebrity`` (one channel, many subscribers: tracking is one dict lookup
per publication against thousands of deliveries), ``rooms`` (1,000 channels of 10: all
counted, the summary never purges), ``users`` (20,000 channels of one subscriber,
uniform: the worst case, one delivery per publication, more channels than the summary
counts, so half the publications enter a new channel and purges come every few
thousand).

The subscribers write to no socket: in a node, each delivery also costs a socket write
(a few microseconds), so the shares here are upper bounds of the share in a server.

Why: hot-channel tracking sits on the fan-out path; DESIGN.md wants its cost as a
figure. The settings take turns within each round, so drift in the machine's load is
shared.

``--callgrind`` measures instructions instead of time: wall and CPU clocks on a shared
machine spread by 10-70% between rounds of one setting, more than the few percent to
be told apart. Each workload's fan-out runs in a child process under ``valgrind
--tool=callgrind`` (which counts the instructions a process executes, the same however
loaded the machine), under each setting, twice each: fanning out the first ``N/4`` and
all ``N`` publications (``N`` 200 for the celebrity) of the same stream, everything
else alike (hash seed fixed, the same publications built, the same subscribers). The
difference of the two counts is the instructions of ``3N/4`` fan-outs alone (start-up,
set-up and teardown cancel), so the cost of tracking is ``(on - off) / off`` of
fan-out's instructions, the same figure on any machine with this interpreter. The
fan-out is the hub's, called as the broker calls it, on publications that follow each
subscriber's position.

Run: ``.venv/bin/python benchmarks/hot_channels.py`` (``--help`` for the options;
``--callgrind`` takes some minutes: valgrind runs Python ~50 times slower).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import report

from tidings.brokers.base import PublicationHandler
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName
from tidings.core.channel_heat import ChannelHeat
from tidings.core.namespace import Namespaces, default_namespaces
from tidings.core.publication import Publication
from tidings.core.wire import EncodedPublication
from tidings.hub.hub import Hub
from tidings.hub.registry import PresenceEvent
from tidings.server.hot_channels import HOT_CHANNEL_CAPACITY, HOT_CHANNEL_LIMIT
from tidings.server.settings import Settings

RESULTS_HEADING: Final = "# Hot-channel tracking cost"
CALLGRIND_HEADING: Final = "# Hot-channel tracking cost, in instructions"
RESULTS_PATH: Final = Path(__file__).resolve().parent / "RESULTS.md"
DATA: Final = b'{"text":"a publication of a typical size, some sixty bytes long"}'
# The settings compared: tracking off; counting every publication (hot_channel_sampling
# = 1); and the default, sampling the publications of few deliveries past each window's
# first ones (core/channel_heat.py).
TRACKINGS: Final = ("off", "exact", "sampled")
SAMPLE_EVERY: Final = Settings().hot_channel_sampling


def heat_for(tracking: str) -> ChannelHeat | None:
    """The hub's counter under ``tracking`` (one of ``TRACKINGS``)."""
    if tracking == "off":
        return None
    every = SAMPLE_EVERY if tracking == "sampled" else 1
    return ChannelHeat(
        HOT_CHANNEL_CAPACITY, HOT_CHANNEL_LIMIT, 10_000.0, sample_every=every, seed=1
    )


@dataclass(frozen=True, slots=True)
class Workload:
    name: str
    channels: int
    subscribers_per_channel: int
    publications: int


WORKLOADS: Final = (
    Workload("celebrity", 1, 5_000, 1_000),
    Workload("rooms", 1_000, 10, 20_000),
    Workload("users", 20_000, 1, 40_000),
)


class QueueingSubscriber:
    """A subscriber whose delivery does what a connection's does first: take the
    publication's WebSocket text (encoded once, shared) and queue it."""

    def __init__(self, client_id: str) -> None:
        self._client_id = client_id
        self.queued: list[str] = []

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def user(self) -> str:
        return ""

    @property
    def clients(self) -> int:
        return 1

    is_relay = False

    def deliver(self, publication: EncodedPublication) -> None:
        queued = self.queued
        queued.append(publication.websocket)
        if len(queued) > 64:  # the connection's writer drained it
            queued.clear()

    def deliver_presence(self, event: PresenceEvent) -> None:
        del event

    def report_gap(self, channel: ChannelName) -> None:
        raise AssertionError(f"the memory broker lost nothing, yet a gap on {channel}")


class CpuTimedBroker(MemoryBroker):
    """The memory broker, adding up the CPU time of each fan-out it calls."""

    fan_out_ns = 0

    async def start(self, on_publication: PublicationHandler) -> None:
        def timed(publication: Publication) -> None:
            started_ns = time.thread_time_ns()
            on_publication(publication)
            self.fan_out_ns += time.thread_time_ns() - started_ns

        await super().start(timed)


@dataclass(frozen=True, slots=True)
class Round:
    fan_out_us: float  # per publication
    publish_cpu_us: float  # per publication, the whole publish path


def stream_of(workload: Workload, seed: int) -> list[ChannelName]:
    names = [ChannelName(f"room:{n}") for n in range(workload.channels)]
    pick = random.Random(seed)
    return [pick.choice(names) for _ in range(workload.publications)]


async def one_round(workload: Workload, stream: Sequence[ChannelName], tracking: str) -> Round:
    # Each round starts from the same heap: garbage a previous round left would be
    # collected in this one's fan-out (it moved rounds by up to 25%, whatever the setting).
    gc.collect()
    namespaces = Namespaces(default_namespaces())
    heat = heat_for(tracking)
    broker = CpuTimedBroker(namespaces)
    hub = Hub(broker, heat=heat)
    await hub.start()
    try:
        for n in range(workload.channels):
            channel = ChannelName(f"room:{n}")
            for s in range(workload.subscribers_per_channel):
                await hub.subscribe(channel, QueueingSubscriber(f"{n}.{s}"))
        started_cpu_s = time.process_time()
        for channel in stream:
            await hub.publish(channel, DATA)
        publish_cpu_s = time.process_time() - started_cpu_s
        fan_out_s = broker.fan_out_ns / 1e9
    finally:
        await hub.close()
    count = len(stream)
    return Round(fan_out_s / count * 1e6, publish_cpu_s / count * 1e6)


def record_cost_ns(workload: Workload, stream: Sequence[ChannelName], tracking: str) -> float:
    """The counting alone (``ChannelHeat.record``, which the hub inlines) over
    ``stream``, per publication (best of 5)."""
    deliveries = workload.subscribers_per_channel
    best = float("inf")
    for _ in range(5):
        heat = heat_for(tracking)
        assert heat is not None
        started = time.perf_counter_ns()
        for channel in stream:
            heat.record(channel, deliveries)
        best = min(best, (time.perf_counter_ns() - started) / len(stream))
    return best


async def measure(workload: Workload, rounds: int) -> list[str]:
    stream = stream_of(workload, seed=len(workload.name))
    runs: dict[str, list[Round]] = {tracking: [] for tracking in TRACKINGS}
    for n in range(rounds):
        order = TRACKINGS[n % len(TRACKINGS) :] + TRACKINGS[: n % len(TRACKINGS)]
        for tracking in order:
            runs[tracking].append(await one_round(workload, stream, tracking))
    fan_off = statistics.median(r.fan_out_us for r in runs["off"])
    cells = [workload.name, f"{workload.channels:,} × {workload.subscribers_per_channel:,}"]
    cells.append(report.spread([r.fan_out_us for r in runs["off"]], ".2f"))
    for tracking in ("exact", "sampled"):
        fan_on = statistics.median(r.fan_out_us for r in runs[tracking])
        record_ns = record_cost_ns(workload, stream, tracking)
        cells += [
            report.spread([r.fan_out_us for r in runs[tracking]], ".2f"),
            f"{(fan_on - fan_off) / fan_off:+.1%}",
            f"{record_ns:.0f} ({record_ns / 1000 / fan_off:.2%})",
        ]
    return cells


async def main(rounds: int, write: bool, note: str) -> None:
    rows = []
    for workload in WORKLOADS:
        rows.append(await measure(workload, rounds))
        print(" | ".join(rows[-1]), flush=True)
    table = report.markdown_table(
        (
            "workload",
            "channels × subscribers",
            "fan-out CPU µs/publication, off",
            "exact",
            "difference",
            "record() ns (share of fan-out off)",
            f"sampled (1 in {SAMPLE_EVERY})",
            "difference",
            "record() ns (share)",
        ),
        rows,
    )
    explanation = (
        f"`{_command_without_note()}`: {rounds} rounds per workload, the settings taking "
        "turns (off; exact: every publication counted; sampled: the default); each "
        "fan-out figure is the median with the minimum and maximum in brackets. "
        "`difference` is the tracking's cost in place (CPU time, so the machine's other "
        "processes inflate it less than wall time). `record()` is the counting alone (the "
        "statements the hub inlines) in a tight loop over the same channels (best of 5), "
        "its caches warm: a lower bound, "
        "exact for the celebrity case where the difference is lost in the spread. The "
        "subscribers write to no socket: in a node each delivery also costs a socket "
        "write, so these shares are upper bounds of a server's."
    )
    _publish(
        RESULTS_HEADING,
        explanation,
        note,
        table,
        machine_heading="Machine (hot channels)",
        write=write,
    )


# -- instructions, under callgrind ------------------------------------------------------------

COLLECTED: Final = re.compile(rb"Collected : (\d+)")
HASH_SEED: Final = "0"  # dicts and sets hash strings alike in every child
# Fewer of the celebrity's publications under callgrind (each is 5,000 deliveries, ~50
# times slower there): 150 fan-outs tell its instructions as surely as 750.
CALLGRIND_PUBLICATIONS: Final = {"celebrity": 200}


class CapturingBroker(MemoryBroker):
    """The memory broker, keeping the handler the hub gives it: the hub's fan-out."""

    fan_out: PublicationHandler | None = None

    async def start(self, on_publication: PublicationHandler) -> None:
        self.fan_out = on_publication
        await super().start(on_publication)


async def fan_out_child(workload: Workload, tracking: str, fanned_out: int) -> None:
    """Subscribe, build every publication of the workload's stream, fan out the first
    ``fanned_out`` of them (the part whose instructions differ between two children)."""
    stream = stream_of(workload, seed=len(workload.name))
    namespaces = Namespaces(default_namespaces())
    heat = heat_for(tracking)
    broker = CapturingBroker(namespaces)
    hub = Hub(broker, heat=heat)
    await hub.start()
    epochs: dict[ChannelName, str] = {}
    for n in range(workload.channels):
        channel = ChannelName(f"room:{n}")
        for s in range(workload.subscribers_per_channel):
            await hub.subscribe(channel, QueueingSubscriber(f"{n}.{s}"))
        epochs[channel] = (await broker.history(channel)).head.epoch
    offsets = dict.fromkeys(epochs, 0)
    publications = []
    for channel in stream:
        offsets[channel] += 1
        publications.append(Publication(channel, epochs[channel], offsets[channel], DATA, 0))
    fan_out = broker.fan_out
    assert fan_out is not None
    gc.collect()
    for publication in publications[:fanned_out]:
        fan_out(publication)
    await hub.close()


def instructions(workload: Workload, tracking: str, fanned_out: int) -> int:
    """The instructions a child fanning out ``fanned_out`` publications executes."""
    with tempfile.TemporaryDirectory(prefix="tidings-callgrind-") as directory:
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={directory}/callgrind.out",
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            workload.name,
            "--tracking",
            tracking,
            "--fanned-out",
            str(fanned_out),
        ]
        environment = {**os.environ, "PYTHONHASHSEED": HASH_SEED}
        done = subprocess.run(argv, capture_output=True, env=environment, check=False)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"callgrind failed ({done.returncode}):\n{done.stderr[-2000:]!r}")
    return int(found.group(1))


def fan_out_instructions(workload: Workload, tracking: str) -> float:
    """Instructions per fan-out: the difference of two children, per publication."""
    all_of_them = CALLGRIND_PUBLICATIONS.get(workload.name, workload.publications)
    few = all_of_them // 4
    with ThreadPoolExecutor(2) as pool:
        low, high = pool.map(
            lambda count: instructions(workload, tracking, count), (few, all_of_them)
        )
    return (high - low) / (all_of_them - few)


def main_callgrind(write: bool, note: str, names: Sequence[str]) -> None:
    rows = []
    for workload in (w for w in WORKLOADS if w.name in names):
        off = fan_out_instructions(workload, "off")
        cells = [
            workload.name,
            f"{workload.channels:,} × {workload.subscribers_per_channel:,}",
            f"{off:,.0f}",
        ]
        for tracking in ("exact", "sampled"):
            on = fan_out_instructions(workload, tracking)
            cells += [f"{on:,.0f}", f"{on - off:,.0f}", f"{(on - off) / off:+.2%}"]
        rows.append(cells)
        print(" | ".join(rows[-1]), flush=True)
    table = report.markdown_table(
        (
            "workload",
            "channels × subscribers",
            "fan-out instructions per publication, off",
            "exact",
            "tracking's instructions",
            "share of fan-out",
            f"sampled (1 in {SAMPLE_EVERY})",
            "tracking's instructions",
            "share of fan-out",
        ),
        rows,
    )
    explanation = (
        f"`{_command_without_note()}`: instructions counted by valgrind's callgrind, not "
        "time: the same on a loaded machine. Per workload and setting, two children fan "
        "out the first N/4 and all N publications of one stream (hash seed fixed, all else "
        "alike); their difference over 3N/4 is one fan-out's instructions. The subscribers "
        "queue each publication's text and write to no socket: in a node each delivery "
        "also costs a socket write, so these shares are upper bounds of a server's."
    )
    _publish(
        CALLGRIND_HEADING,
        explanation,
        note,
        table,
        machine_heading="Machine (hot channels, instructions)",
        write=write,
    )


def _publish(
    heading: str,
    explanation: str,
    note: str,
    table: str,
    *,
    machine_heading: str,
    write: bool,
) -> None:
    """Print a RESULTS.md section (the explanation, the note, the table, the machine),
    and write it there with ``write``."""
    described = report.markdown_table(
        ("", ""), [(name, value) for name, value in report.machine(("msgspec",))]
    )
    noted = f"{note}\n\n" if note else ""
    text = f"{heading}\n\n{explanation}\n\n{noted}{table}\n\n## {machine_heading}\n\n{described}\n"
    print(text)
    if write:
        report.write_section(RESULTS_PATH, heading, text)


def _command_without_note() -> str:
    """The command line, its ``--note`` (printed as a paragraph of its own) left out."""
    words = shlex.split(report.command())
    if "--note" in words:
        at = words.index("--note")
        del words[at : at + 2]
    return shlex.join(words)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per workload and setting")
    parser.add_argument(
        "--no-write", action="store_true", help="print the figures, leave RESULTS.md alone"
    )
    parser.add_argument(
        "--note", default="", help="a paragraph to add (the machine's load, a comparison)"
    )
    parser.add_argument(
        "--callgrind", action="store_true", help="count instructions under valgrind instead"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(w.name for w in WORKLOADS),
        help="of --callgrind: which workloads (comma-separated)",
    )
    parser.add_argument("--child", choices=[w.name for w in WORKLOADS], help=argparse.SUPPRESS)
    parser.add_argument("--tracking", choices=TRACKINGS, help=argparse.SUPPRESS)
    parser.add_argument("--fanned-out", type=int, default=0, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        chosen = next(w for w in WORKLOADS if w.name == arguments.child)
        asyncio.run(fan_out_child(chosen, arguments.tracking, arguments.fanned_out))
    elif arguments.callgrind:
        main_callgrind(not arguments.no_write, arguments.note, arguments.workloads.split(","))
    else:
        asyncio.run(main(arguments.rounds, not arguments.no_write, arguments.note))
