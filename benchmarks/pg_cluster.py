"""A PostgreSQL cluster of a benchmark's own, with ``pg_stat_statements``, and the CPU
time of its processes.

``initdb`` and ``pg_ctl`` run as user ``postgres`` (``runuser``: the benchmark runs as
root), in a temporary directory, on a free port of 127.0.0.1, so the cluster's
statistics hold one run alone. CPU time is user + system of the postmaster and each of
its children, from ``/proc`` (``server_process.process_cpu_s``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from benchmarks.server_process import child_pids, free_port, process_cpu_s


def _postgres_binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        sys.exit(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return found[-1]


@dataclass
class Cluster:
    """A PostgreSQL cluster of the benchmark's own, with pg_stat_statements."""

    directory: Path
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=120,
        )

    def start(self) -> None:
        if os.geteuid() != 0 or shutil.which("runuser") is None:
            sys.exit("run as root: the cluster is made with initdb as user postgres (runuser)")
        shutil.chown(self.directory, "postgres")
        data = str(self.directory / "data")
        self._as_postgres(_postgres_binary("initdb"), "-D", data, "-A", "trust", "-U", "postgres")
        settings = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c shared_preload_libraries=pg_stat_statements "
            "-c pg_stat_statements.track_utility=off -c max_connections=200"
        )
        log = str(self.directory / "log")
        self._as_postgres(
            _postgres_binary("pg_ctl"), "-D", data, "-l", log, "-o", settings, "-w", "start"
        )
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")

    def stop(self) -> None:
        data = str(self.directory / "data")
        with contextlib.suppress(subprocess.SubprocessError):
            self._as_postgres(_postgres_binary("pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")

    def postmaster_pid(self) -> int:
        return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])

    def cpu(self) -> dict[int, float]:
        """CPU seconds so far of the postmaster and each of its children, by pid."""
        pids = [self.postmaster_pid()]
        pids += child_pids(pids[0])
        found: dict[int, float] = {}
        for pid in pids:
            with contextlib.suppress(OSError):
                found[pid] = process_cpu_s(pid)
        return found


def cpu_spent(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds spent between two readings (a process started since counts whole;
    one that ended since is lost, which connection pools make rare)."""
    return sum(used - before.get(pid, 0.0) for pid, used in after.items())
