"""A server under test: a subprocess pinned to one CPU, and the CPU time and memory it uses.

CPU time is user + system time of the whole process (all threads) from
``/proc/<pid>/stat``, so the benchmark can report what the server itself spent on a
window of work, whatever else runs on the machine. The figures have the kernel's
clock-tick resolution (``SC_CLK_TCK``, usually 10 ms); windows last seconds. Memory is
the resident set size from ``/proc/<pid>/status``. For a server whose work is done by
a child process (nginx's worker), both are read from that child.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx

CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")
_UTIME_FIELD: Final = 11  # fields 14 and 15 of stat(5), counted after the ")" of comm
_STIME_FIELD: Final = 12
_IDLE_COLUMN: Final = 3  # user nice system idle iowait irq softirq steal
_IOWAIT_COLUMN: Final = 4
STOP_TIMEOUT_S: Final = 15.0


def process_cpu_s(pid: int) -> float:
    """Return user + system CPU seconds used so far by process ``pid`` (all threads)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rpartition(")")[2].split()
    return (int(fields[_UTIME_FIELD]) + int(fields[_STIME_FIELD])) / CLOCK_TICKS_PER_S


def process_rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid`` in bytes (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024  # the kernel writes kB
    raise ValueError(f"no VmRSS for process {pid}")


def child_pids(pid: int) -> list[int]:
    """Return the ids of the children of process ``pid`` (its main thread's children)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in children.split()]


def core_busy_s(cpu: int) -> float:
    """Return the seconds core ``cpu`` has been busy or stolen by the hypervisor, all tasks.

    The columns of ``/proc/stat`` other than idle and iowait; compared with a process's
    own CPU time it shows how much else ran on the core the process was pinned to.
    """
    prefix = f"cpu{cpu} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            ticks = [int(field) for field in line.split()[1:9]]
            idle = ticks[_IDLE_COLUMN] + ticks[_IOWAIT_COLUMN]
            return (sum(ticks) - idle) / CLOCK_TICKS_PER_S
    raise ValueError(f"no cpu{cpu} in /proc/stat")


def raise_open_files_limit() -> int:
    """Raise this process's soft open-files limit to the hard one (children inherit it)."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def prepare_generator(cpu: int) -> None:
    """Make this process the load generator: alone on ``cpu`` (the servers get the other
    cores), allowed as many open files as the hard limit (a socket per client)."""
    os.sched_setaffinity(0, {cpu})
    raise_open_files_limit()


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that is free right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class CpuReading:
    """CPU seconds used so far by the server, by this process and on each one's core."""

    server_s: float
    generator_s: float
    server_core_s: float
    generator_core_s: float
    wall_s: float

    @classmethod
    def take(cls, server_pid: int, server_cpu: int, generator_cpu: int) -> CpuReading:
        """Read every counter now."""
        return cls(
            server_s=process_cpu_s(server_pid),
            generator_s=time.process_time(),
            server_core_s=core_busy_s(server_cpu),
            generator_core_s=core_busy_s(generator_cpu),
            wall_s=time.monotonic(),
        )

    def __sub__(self, start: CpuReading) -> CpuReading:
        return CpuReading(
            self.server_s - start.server_s,
            self.generator_s - start.generator_s,
            self.server_core_s - start.server_core_s,
            self.generator_core_s - start.generator_core_s,
            self.wall_s - start.wall_s,
        )

    def percent(self, seconds: float) -> float:
        """``seconds`` as a percentage of this reading's wall time (for a difference)."""
        return 100 * seconds / self.wall_s if self.wall_s > 0 else 0.0

    def others_pct(self, core_s: float, own_s: float) -> float:
        """What else kept a core busy, in percent of the wall time (for a difference).

        The core's counters are sampled at clock ticks and a process's are exact, so the
        difference is a few percent either way when nothing else ran: floored at 0.
        """
        return max(0.0, self.percent(core_s - own_s))


@dataclass
class ServerProcess:
    """A running server; ``cpu_s`` reads its CPU time, ``stop`` ends it.

    ``worker_pid`` is set for a server whose started process only supervises the one
    that serves (nginx's master and its worker): the figures are the worker's.
    """

    name: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    worker_pid: int | None = None

    @property
    def pid(self) -> int:
        """The id of the process that serves: the worker where there is one."""
        return self.process.pid if self.worker_pid is None else self.worker_pid

    def cpu_s(self) -> float:
        """User + system CPU seconds the serving process has used so far."""
        return process_cpu_s(self.pid)

    def rss_bytes(self) -> int:
        """The serving process's resident set size now, in bytes."""
        return process_rss_bytes(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines the server wrote, for error messages."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``STOP_TIMEOUT_S``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(
    name: str,
    argv: list[str],
    port: int,
    log_path: Path,
    cpu: int,
    *,
    env: Mapping[str, str] | None = None,
) -> ServerProcess:
    """Start ``argv`` with output to ``log_path``, pinned to ``cpu`` before it does any work.

    ``env`` adds to (or overrides) this process's environment.
    """
    environment = None if env is None else {**os.environ, **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=environment)
    # The child is still starting its interpreter; threads it creates inherit this mask.
    os.sched_setaffinity(process.pid, {cpu})
    return ServerProcess(name, port, process, log_path)


async def wait_healthy(server: ServerProcess, path: str, timeout_s: float = 20.0) -> None:
    """Wait until ``GET path`` answers 200; raise if the server died or took too long."""
    deadline_s = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{server.port}{path}"
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline_s:
            if server.process.poll() is not None:
                raise RuntimeError(f"{server.name} exited:\n{server.log_tail()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.name} not healthy after {timeout_s:g} s:\n{server.log_tail()}")
