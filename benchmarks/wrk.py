"""wrk, the HTTP load generator written in C, run pinned to one CPU, its figures read back.

I/O: installs Debian's ``wrk`` with apt-get when it is missing (``debian.ensure``), runs
it as a subprocess under ``taskset`` (so its threads never leave the generator's CPU),
parses what it prints and takes the CPU time it used from the kernel when it exits
(``wait4``'s resource usage: user + system, all its threads). The comparison uses it
for short polling, where a Python generator would cost more per request than the
servers it measures.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchmarks import debian

PACKAGES: Final = {"wrk": Path("wrk")}
_REQUESTS: Final = re.compile(r"(\d+) requests in ([\d.]+)(us|ms|s|m)\b")
_LATENCY: Final = re.compile(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_NON_2XX_3XX: Final = re.compile(r"Non-2xx or 3xx responses: (\d+)")
_SOCKET_ERRORS: Final = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_TO_S: Final = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


@dataclass(frozen=True, slots=True)
class WrkRun:
    """What one wrk run did, as wrk printed it, and the CPU time wrk used."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    errors: int  # answers other than 2xx/3xx, and socket errors
    cpu_s: float

    @property
    def requests_per_s(self) -> float:
        """Requests answered per second of the run."""
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0


def ensure_installed() -> list[str]:
    """Install wrk when missing; the packages installed."""
    return debian.ensure(PACKAGES)


def version() -> str:
    """The installed wrk, as Debian names its package."""
    return f"wrk {debian.installed_version('wrk')}"


def run(
    url: str,
    headers: Mapping[str, str],
    *,
    connections: int,
    duration_s: int,
    cpu: int,
) -> WrkRun:
    """Run ``wrk`` against ``url`` on keep-alive connections, pinned to ``cpu``; blocks.

    Args:
        url: what every request gets.
        headers: sent with every request.
        connections: keep-alive connections, all on one wrk thread.
        duration_s: how long wrk sends requests.
        cpu: the CPU wrk runs on.

    Raises:
        RuntimeError: wrk failed, or printed nothing this module understands.
    """
    argv = ["taskset", "-c", str(cpu), "wrk", "--latency", "-t1", f"-c{connections}"]
    argv += [f"-d{duration_s}s", "--timeout", "10s"]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(url)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    output = process.stdout.read().decode(errors="replace")
    # wait4, not Popen.wait: it also gives the child's CPU time (taskset exec'd wrk).
    _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    process.stdout.close()
    requests = _REQUESTS.search(output)
    if process.returncode != 0 or requests is None:
        raise RuntimeError(f"wrk failed ({process.returncode}):\n{output}")
    latency = {
        found[1]: float(found[2]) * _TO_S[found[3]] * 1e3 for found in _LATENCY.finditer(output)
    }
    non_2xx = _NON_2XX_3XX.search(output)
    sockets = _SOCKET_ERRORS.search(output)
    errors = (int(non_2xx[1]) if non_2xx else 0) + (
        sum(int(count) for count in sockets.groups()) if sockets else 0
    )
    return WrkRun(
        requests=int(requests[1]),
        duration_s=float(requests[2]) * _TO_S[requests[3]],
        p50_ms=latency.get("50", float("nan")),
        p99_ms=latency.get("99", float("nan")),
        errors=errors,
        cpu_s=usage.ru_utime + usage.ru_stime,
    )
