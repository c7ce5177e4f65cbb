"""Figures of the fan-out benchmark: one phase's measurement, their summary over runs, the
table, and ``RESULTS.md`` with the machine and the command that produced it.

Each figure is reported as the median of the runs with the minimum and maximum in
brackets, so a reader sees at once how much the runs agreed.
"""

from __future__ import annotations

import datetime
import math
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Final, Generic, TypeVar

LIBRARIES: Final = ("tidings", "uvicorn", "starlette", "websockets", "uvloop", "httptools")
GENERATOR_BOUND_PCT: Final = 90.0
OTHERS_TOLERATED_PCT: Final = 10.0
REPO_DIR: Final = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class PhaseFigures:
    """What one phase of one run measured, for one server."""

    expected: int
    deliveries: int
    duplicates: int
    deliveries_per_s: float
    publications_per_s: float
    p50_ms: float
    p99_ms: float
    server_cpu_us_per_delivery: float
    server_cpu_pct: float
    generator_cpu_pct: float
    generator_cpu_us_per_delivery: float
    server_core_other_pct: float
    generator_core_other_pct: float

    @property
    def missing(self) -> int:
        """Deliveries that never arrived."""
        return self.expected - self.deliveries


# server → phase → one PhaseFigures per run
Results = dict[str, dict[str, list[PhaseFigures]]]


def percentile_ms(sorted_ns: Sequence[int], fraction: float) -> float:
    """The nearest-rank percentile of sorted nanosecond values, in milliseconds."""
    if not sorted_ns:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_ns)))
    return sorted_ns[rank - 1] / 1e6


F = TypeVar("F")


# Not slotted: typing sets ``__orig_class__`` on an instance of ``Column[X](...)``, which
# a slotted frozen dataclass turns into a TypeError on Python 3.11.
@dataclass(frozen=True)
class Column(Generic[F]):
    """A column of a table: its title, how to read a figure of one run, how to print it."""

    title: str
    read: Callable[[F], float]
    style: str


PhaseColumn = Column[PhaseFigures]
FIGURES: Final = (
    PhaseColumn("deliveries/s", lambda f: f.deliveries_per_s, ",.0f"),
    PhaseColumn("latency p50 ms", lambda f: f.p50_ms, ".2f"),
    PhaseColumn("latency p99 ms", lambda f: f.p99_ms, ".2f"),
    PhaseColumn("server CPU µs/delivery", lambda f: f.server_cpu_us_per_delivery, ".2f"),
)
CONDITIONS: Final = (
    PhaseColumn("publications/s", lambda f: f.publications_per_s, ",.1f"),
    PhaseColumn("server CPU %", lambda f: f.server_cpu_pct, ".0f"),
    PhaseColumn("generator CPU %", lambda f: f.generator_cpu_pct, ".0f"),
    PhaseColumn("generator CPU µs/delivery", lambda f: f.generator_cpu_us_per_delivery, ".2f"),
    PhaseColumn("others on server core %", lambda f: f.server_core_other_pct, ".0f"),
    PhaseColumn("others on generator core %", lambda f: f.generator_core_other_pct, ".0f"),
)


def spread(values: Sequence[float], style: str) -> str:
    """``median (min–max)`` of ``values``."""
    if len(values) == 1:
        return format(values[0], style)
    low, mid, high = min(values), statistics.median(values), max(values)
    return f"{mid:{style}} ({low:{style}}–{high:{style}})"


def markdown_table(titles: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table of ``rows`` under ``titles``."""
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def spread_cells(runs: Sequence[F], columns: Sequence[Column[F]]) -> list[str]:
    """Each column's figure over ``runs``, as ``spread`` prints it."""
    return [spread([column.read(run) for run in runs], column.style) for column in columns]


def table(
    results: Results,
    columns: Sequence[PhaseColumn] = FIGURES,
    *,
    with_missing: bool = True,
    phase_title: str = "phase",
) -> str:
    """A Markdown table: one row per server and phase, each figure over the runs."""
    titles = ["server", phase_title, *(column.title for column in columns)]
    titles += ["missing"] if with_missing else []
    rows = []
    for phase in _phases(results):
        for server, phases in results.items():
            runs = phases.get(phase, [])
            if not runs:
                continue
            cells = spread_cells(runs, columns)
            if with_missing:
                cells.append(
                    f"{sum(r.missing for r in runs):,} of {sum(r.expected for r in runs):,}"
                )
            rows.append([server, phase, *cells])
    return markdown_table(titles, rows)


def _phases(results: Results) -> list[str]:
    seen: dict[str, None] = {}
    for phases in results.values():
        seen.update(dict.fromkeys(phases))
    return list(seen)


def warnings(results: Results) -> list[str]:
    """Lines for anything that makes a figure doubtful: losses, duplicates, a busy generator."""
    found = []
    for server, phases in results.items():
        for phase, runs in phases.items():
            busiest = max(run.generator_cpu_pct for run in runs)
            if busiest >= GENERATOR_BOUND_PCT:
                found.append(
                    f"{server} {phase}: the generator was {busiest:.0f}% busy: the figure "
                    "may measure the generator, not the server"
                )
            others = max(max(r.server_core_other_pct, r.generator_core_other_pct) for r in runs)
            if others >= OTHERS_TOLERATED_PCT:
                found.append(
                    f"{server} {phase}: other processes (or the hypervisor) took up to "
                    f"{others:.0f}% of a benchmark core: the figures are disturbed"
                )
            if any(run.duplicates for run in runs):
                found.append(f"{server} {phase}: duplicate deliveries were received")
            if any(run.missing for run in runs):
                found.append(f"{server} {phase}: some deliveries never arrived")
    return found


def machine(libraries: Sequence[str] = LIBRARIES) -> list[tuple[str, str]]:
    """The machine and software the figures come from (``libraries``: Python packages)."""
    versions = ", ".join(f"{name} {_version(name)}" for name in libraries)
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return [
        ("CPU", _cpu_model()),
        ("cores", str(os.cpu_count())),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("libraries", versions),
        ("load average at start", load),
    ]


def command() -> str:
    """The command line that is running, relative to the repository root."""
    python = os.path.relpath(sys.executable, REPO_DIR)
    script = os.path.relpath(Path(sys.argv[0]).resolve(), REPO_DIR)
    return shlex.join([python, script, *sys.argv[1:]])


def provenance() -> str:
    """The sentence of a section of RESULTS.md that says which command wrote it, and when."""
    return (
        f"Command: `{command()}` (from the repository root), on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}."
    )


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def results_markdown(
    tables: tuple[str, str], setup: str, notes: list[str], environment: list[tuple[str, str]]
) -> str:
    """The text of ``RESULTS.md``: the figures, then the conditions they were taken in."""
    described = "\n".join(f"- {name}: {value}" for name, value in environment)
    noted = "\n".join(f"- {note}" for note in notes) or "- none"
    return (
        "# Fan-out benchmark results\n\n"
        "Written by `benchmarks/fanout.py`; README.md says what each figure means. "
        "Each cell is the median of the runs, with the minimum and maximum in brackets; "
        "`missing` is summed over the runs.\n\n"
        f"{setup}\n\n{tables[0]}\n\n## Conditions\n\n{tables[1]}\n\n"
        f"## Warnings\n\n{noted}\n\n"
        f"## Machine\n\n{described}\n"
    )


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the section of ``path`` that starts at ``heading`` (up to the next top-level
    heading) with ``text``, or append ``text``: each benchmark rewrites only its own
    figures in RESULTS.md and keeps the others'."""
    existing = path.read_text() if path.exists() else ""
    start = 0 if existing.startswith(f"{heading}\n") else existing.find(f"\n{heading}\n")
    if start >= 0:
        following = existing.find("\n# ", start + len(heading) + 1)
        rest = existing[following:] if following >= 0 else ""
        existing = existing[:start].rstrip("\n") + "\n" + rest
    existing = existing.strip("\n")
    text = text.strip("\n")
    if start == 0:  # keep a section that was first in the file first
        path.write_text(f"{text}\n\n{existing}\n" if existing else f"{text}\n")
    else:
        path.write_text(f"{existing}\n\n{text}\n" if existing else f"{text}\n")


def warn_and_write(notes: Sequence[str], results: Path | None, heading: str, text: str) -> None:
    """Print each of ``notes`` as a warning; then, unless ``results`` is None, write
    ``text`` as the ``heading`` section of ``results`` (``write_section``) and say so."""
    for note in notes:
        print(f"warning: {note}")
    if results is not None:
        write_section(results, heading, text)
        print(f"written: {os.path.relpath(results)}")
