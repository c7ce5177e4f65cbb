"""The figures of the side-by-side comparison: kept per run, tabled, checked, written out.

Pure apart from reading the clock for the date line: ``Comparison`` holds every run's
figures as ``workloads.py`` returned them; ``tables`` gives one Markdown table per
group of workloads (each cell the median of the runs with the minimum and maximum in
brackets, ``report.spread``); ``warnings`` lists what makes a figure doubtful, the
generator being the bottleneck first; ``section`` is the text ``compare.py`` writes
into RESULTS.md under ``HEADING``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeVar

from benchmarks import fanout, loadgen, report
from benchmarks.workloads import (
    IdleFigures,
    PublishFigures,
    ShortPollFigures,
    Sizes,
)

HEADING: Final = "# Side-by-side comparison"
MIB: Final = 1024 * 1024
F = TypeVar("F")


@dataclass
class Comparison:
    """Every run's figures: per workload, per server, one entry per run; and notes.

    ``fan_out`` and ``publish`` are keyed by server, then by workload.
    """

    fan_out: report.Results = field(default_factory=dict)
    short_poll: dict[str, list[ShortPollFigures]] = field(default_factory=dict)
    idle: dict[str, list[IdleFigures]] = field(default_factory=dict)
    publish: dict[str, dict[str, list[PublishFigures]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Keep ``text`` for the warnings, once."""
        if text not in self.notes:
            self.notes.append(text)


# -- tables --------------------------------------------------------------------------------

FAN_OUT_COLUMNS: Final = (
    *report.FIGURES,
    report.PhaseColumn(
        "generator CPU µs/delivery", lambda f: f.generator_cpu_us_per_delivery, ".2f"
    ),
)
_Poll = report.Column[ShortPollFigures]
SHORT_POLL_COLUMNS: Final = (
    _Poll("requests/s", lambda f: f.requests_per_s, ",.0f"),
    _Poll("server CPU µs/request", lambda f: f.server_cpu_us_per_request, ".2f"),
    _Poll("latency p50 ms", lambda f: f.p50_ms, ".2f"),
    _Poll("latency p99 ms", lambda f: f.p99_ms, ".2f"),
    _Poll("wrk CPU µs/request", lambda f: f.generator_cpu_us_per_request, ".2f"),
    _Poll("server CPU %", lambda f: f.server_cpu_pct, ".0f"),
    _Poll("wrk CPU %", lambda f: f.generator_cpu_pct, ".0f"),
    _Poll("others on server core %", lambda f: f.server_core_other_pct, ".0f"),
)
_Idle = report.Column[IdleFigures]
IDLE_COLUMNS: Final = (
    _Idle("RSS KiB/connection", lambda f: f.bytes_per_connection / 1024, ",.1f"),
    _Idle("RSS before MiB", lambda f: f.rss_before_bytes / MIB, ",.1f"),
    _Idle("RSS after MiB", lambda f: f.rss_after_bytes / MIB, ",.1f"),
    _Idle("s to open", lambda f: f.open_s, ".1f"),
    _Idle("held", lambda f: f.held, ",.0f"),
    _Idle("RSS holding MiB", lambda f: f.rss_held_bytes / MIB, ",.1f"),
)
_Publish = report.Column[PublishFigures]
PUBLISH_COLUMNS: Final = (
    _Publish("publications/s", lambda f: f.publications_per_s, ",.0f"),
    _Publish("server CPU µs/publication", lambda f: f.server_cpu_us_per_publication, ".2f"),
    _Publish("generator CPU µs/publication", lambda f: f.generator_cpu_us_per_publication, ".2f"),
    _Publish("server CPU %", lambda f: f.server_cpu_pct, ".0f"),
    _Publish("generator CPU %", lambda f: f.generator_cpu_pct, ".0f"),
    _Publish("others on server core %", lambda f: f.server_core_other_pct, ".0f"),
)


def _server_table(
    by_server: dict[str, list[F]],
    columns: Sequence[report.Column[F]],
    total: tuple[str, Callable[[F], int]] | None = None,
) -> str:
    """One row per server: each column over the runs, then a count summed over them."""
    return _table(["server"], [([name], runs) for name, runs in by_server.items()], columns, total)


def _table(
    keys: Sequence[str],
    by_row: Iterable[tuple[Sequence[str], Sequence[F]]],
    columns: Sequence[report.Column[F]],
    total: tuple[str, Callable[[F], int]] | None = None,
) -> str:
    """One row per key (its cells under ``keys``): each column over the runs, then a count."""
    titles = [*keys, *(column.title for column in columns)]
    titles += [total[0]] if total else []
    rows = []
    for key, runs in by_row:
        cells = [*key, *report.spread_cells(runs, columns)]
        if total:
            cells.append(f"{sum(total[1](run) for run in runs):,}")
        rows.append(cells)
    return report.markdown_table(titles, rows)


def _batch(runs: Sequence[PublishFigures]) -> str:
    """The publishing workload as the table names it: ``single`` or ``batch of N``."""
    return "single" if runs[0].batch == 1 else f"batch of {runs[0].batch:,}"


def tables(comparison: Comparison, sizes: Sizes) -> list[tuple[str, str]]:
    """Each group of workloads that ran: its title and its Markdown table."""
    found = []
    if comparison.fan_out:
        found += [
            (
                "Fan-out: WebSocket, SSE, long poll",
                report.table(comparison.fan_out, FAN_OUT_COLUMNS, phase_title="workload"),
            ),
            (
                "Fan-out conditions",
                report.table(
                    comparison.fan_out,
                    report.CONDITIONS,
                    with_missing=False,
                    phase_title="workload",
                ),
            ),
        ]
    if comparison.short_poll:
        polled = _server_table(
            comparison.short_poll, SHORT_POLL_COLUMNS, ("errors", lambda f: f.errors)
        )
        found.append(("Short poll with nothing new (304)", polled))
    if comparison.idle:
        held = _server_table(comparison.idle, IDLE_COLUMNS).replace(
            "| held |", f"| held of {sizes.hold_connections:,} |", 1
        )
        found.append(("Idle WebSocket connections", held))
    if comparison.publish:
        by_row = [
            ([server, _batch(runs)], runs)
            for server, by_workload in comparison.publish.items()
            for runs in by_workload.values()
        ]
        published = _table(
            ["server", "workload"], by_row, PUBLISH_COLUMNS, ("failed", lambda f: f.failed)
        )
        found.append(("Publishing through the server API", published))
    return found


# -- warnings ------------------------------------------------------------------------------


def warnings(comparison: Comparison, sizes: Sizes) -> list[str]:
    """What makes a figure doubtful: the generator as the bottleneck, other load, losses."""
    found = report.warnings(comparison.fan_out)
    for server, phases in comparison.fan_out.items():
        for workload, runs in phases.items():
            generator = statistics.median(r.generator_cpu_us_per_delivery for r in runs)
            served = statistics.median(r.server_cpu_us_per_delivery for r in runs)
            if generator > served:
                found.append(
                    f"{server} {workload}: the generator spent more CPU per delivery than the "
                    f"server ({generator:.1f} vs {served:.1f} µs): at a rate that kept it "
                    "busy, the generator, not the server, would be the limit"
                )
    for server, polled in comparison.short_poll.items():
        found += _busy(f"{server} short-poll", "wrk", [r.generator_cpu_pct for r in polled])
        found += _others(f"{server} short-poll", [r.server_core_other_pct for r in polled])
        if any(r.errors for r in polled):
            found.append(f"{server} short-poll: wrk counted errors (non-2xx/3xx or socket)")
    for server, held in comparison.idle.items():
        fewest = min(r.held for r in held)
        if fewest < sizes.hold_connections:
            found.append(
                f"{server} idle: held only {fewest:,} of {sizes.hold_connections:,} connections"
            )
    for server, by_workload in comparison.publish.items():
        for workload, published in by_workload.items():
            what = f"{server} {workload}"
            found += _busy(what, "the generator", [r.generator_cpu_pct for r in published])
            found += _others(what, [r.server_core_other_pct for r in published])
            if any(r.failed for r in published):
                found.append(f"{what}: some requests were not answered 2xx")
    return found


def _busy(what: str, generator: str, busy_pct: list[float]) -> list[str]:
    busiest = max(busy_pct)
    if busiest < report.GENERATOR_BOUND_PCT:
        return []
    return [
        f"{what}: {generator} was {busiest:.0f}% busy, the bottleneck: the figure may "
        "measure the generator, not the server"
    ]


def _others(what: str, others_pct: list[float]) -> list[str]:
    most = max(others_pct)
    if most < report.OTHERS_TOLERATED_PCT:
        return []
    return [f"{what}: other processes took up to {most:.0f}% of the server core"]


# -- RESULTS.md ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """What runs: which workloads on which servers, how many times, how big."""

    workloads: tuple[str, ...]
    servers: tuple[str, ...]
    runs: int
    sizes: Sizes


@dataclass(frozen=True, slots=True)
class Setup:
    """How the figures were taken: the plan, what was left out of it, the machine."""

    plan: Plan
    skipped: tuple[str, ...]
    environment: tuple[tuple[str, str], ...]


def _workload_lines(setup: Setup) -> list[str]:
    sizes = setup.plan.sizes
    warm = f"{sizes.warmup_s:g} s unmeasured"
    pipelined = (
        f"pipelined {sizes.publish_depth} deep on {sizes.publish_connections} keep-alive "
        f"connections for {sizes.publish_duration_s:g} s after {warm}, no subscribers"
    )
    batch = f"{sizes.publish_batch:,}"
    lines = {
        "websocket": f"`websocket`, `sse`: one channel, {sizes.subscribers:,} subscribers, "
        f"{sizes.rate:g} publications/s for {sizes.duration_s:g} s after {warm}",
        "long-poll": f"`long-poll`: {sizes.long_poll_subscribers:,} long pollers, "
        f"{sizes.long_poll_rate:g} publications/s for {sizes.duration_s:g} s after {warm} "
        "(tidings `GET /poll?channel=&cursor=&wait=25`; Nchan resuming with "
        "`If-Modified-Since`/`If-None-Match`)",
        "short-poll": f"`short-poll`: wrk, 1 thread, {sizes.wrk_connections} keep-alive "
        f"connections, {sizes.wrk_duration_s} s, every answer `304 Not Modified` (tidings "
        "`GET /poll?channel=&cursor=<current>` with `If-None-Match`; Nchan's interval poll "
        "with `If-Modified-Since`/`If-None-Match`)",
        "idle": f"`idle`: RSS with 1 subscribed WebSocket, then with "
        f"{sizes.idle_connections:,} more (KiB/connection = the difference / "
        f"{sizes.idle_connections:,}), then {sizes.hold_connections:,} in all (tidings with "
        "`TIDINGS_MAX_CONNECTIONS=20000`, its default being 10,000)",
        "publish": f"`publish`: `POST /api/publish` into one channel of the memory broker "
        f"(history on: the last 100 kept), {pipelined}",
        "publish-batch": f"`publish-batch`: `POST /api/broadcast` (docs/protocol.md §6's batched "
        f"publish) of the same data into {batch} channels of the memory broker "
        f"(`{loadgen.CHANNEL}-0`…, history on), {pipelined}; each 2xx answer counts as "
        f"{batch} publications, and the CPU figures are per publication",
    }
    chosen = {"sse": "websocket"}
    keys = dict.fromkeys(chosen.get(name, name) for name in setup.plan.workloads)
    return [lines[key] for key in keys]


def section(setup: Setup, comparison: Comparison, found: list[str]) -> str:
    """The ``# Side-by-side comparison`` section of RESULTS.md."""
    skipped = "".join(f" {note}." for note in setup.skipped)
    workloads = "\n".join(f"- {line}" for line in _workload_lines(setup))
    noted = "\n".join(f"- {note}" for note in [*found, *comparison.notes]) or "- none"
    machine = "\n".join(f"- {name}: {value}" for name, value in setup.environment)
    figures = "\n\n".join(
        f"## {title}\n\n{text}" for title, text in tables(comparison, setup.plan.sizes)
    )
    return (
        f"{HEADING}\n\n"
        "Written by `benchmarks/compare.py`; README.md says what each figure means. Each "
        "cell is the median of the runs, with the minimum and maximum in brackets; "
        "`missing`, `errors` and `failed` are summed over the runs.\n\n"
        f"{report.provenance()}\n\n"
        f"Servers: {', '.join(setup.plan.servers)}.{skipped} A fresh server for each run; "
        f"{setup.plan.runs} run{'' if setup.plan.runs == 1 else 's'} per server and workload, "
        f"alternating which server goes first. ~{loadgen.PAYLOAD_BYTES}-byte data, loopback; "
        f"the server (for nginx its master and its one worker) on CPU {fanout.SERVER_CPU}, "
        f"the generator (and wrk) on CPU {fanout.GENERATOR_CPU}.\n\n{workloads}\n\n{figures}\n\n"
        f"## Warnings (comparison)\n\n{noted}\n\n## Machine (comparison)\n\n{machine}\n"
    )
