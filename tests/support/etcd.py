"""etcd servers of the test's own (Debian's ``etcd-server``): one member, or a cluster of
several, on free loopback ports in a temporary directory; stopped, paused and resumed by
their pids. Missing ``etcd``: skipped locally, failed under ``CI=true`` (services.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import httpx

from tests.support.server import free_port
from tests.support.services import require_binary

START_TIMEOUT_S: Final = 30.0


@dataclass
class EtcdMember:
    """One etcd process of a cluster."""

    name: str
    client_url: str
    process: subprocess.Popen[bytes]

    def kill(self) -> None:
        """SIGKILL it (a crash) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def pause(self) -> None:
        """SIGSTOP it: it keeps its sockets and answers nothing (etcd unreachable)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT it."""
        os.kill(self.process.pid, signal.SIGCONT)

    def is_leader(self) -> bool:
        """Whether it is the cluster's leader now (its own status says so)."""
        try:
            answer = httpx.post(f"{self.client_url}/v3/maintenance/status", json={}, timeout=2.0)
        except httpx.HTTPError:
            return False
        status = answer.json()
        return bool(status.get("leader")) and status["leader"] == status["header"]["member_id"]


@dataclass
class EtcdCluster:
    """The members of one etcd cluster, in start order."""

    members: list[EtcdMember]

    @property
    def urls(self) -> str:
        """Every member's client URL, comma-separated (``ring_etcd``)."""
        return ",".join(member.client_url for member in self.members)

    def leader(self) -> EtcdMember:
        """The member that leads now (fails the test if none does within a few seconds)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for member in self.members:
                if member.process.poll() is None and member.is_leader():
                    return member
            time.sleep(0.05)
        raise RuntimeError("no etcd member leads")


@contextmanager
def etcd_cluster(directory: Path, size: int = 1) -> Iterator[EtcdCluster]:
    """Run an etcd cluster of ``size`` members with their data under ``directory``;
    yield it once every member is healthy (a leader is elected); kill every member on
    exit."""
    etcd = require_binary("etcd")
    names = [f"m{n}" for n in range(size)]
    clients = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    peers = {name: f"http://127.0.0.1:{free_port()}" for name in names}
    initial = ",".join(f"{name}={peers[name]}" for name in names)
    with ExitStack() as stack:
        members = []
        for name in names:
            log: IO[bytes] = stack.enter_context((directory / f"etcd-{name}.log").open("wb"))
            process = subprocess.Popen(
                [
                    etcd,
                    f"--name={name}",
                    f"--data-dir={directory / f'data-{name}'}",
                    f"--listen-client-urls={clients[name]}",
                    f"--advertise-client-urls={clients[name]}",
                    f"--listen-peer-urls={peers[name]}",
                    f"--initial-advertise-peer-urls={peers[name]}",
                    f"--initial-cluster={initial}",
                    f"--initial-cluster-token=test-{directory.name}",
                    "--initial-cluster-state=new",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            member = EtcdMember(name, clients[name], process)
            stack.callback(_resumed_and_killed, member)
            members.append(member)
        deadline = time.monotonic() + START_TIMEOUT_S
        for member in members:
            while not _is_healthy(member.client_url):
                if member.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"etcd did not start: see {directory}/etcd-{member.name}.log"
                    )
                time.sleep(0.05)
        yield EtcdCluster(members)


def _resumed_and_killed(member: EtcdMember) -> None:
    if member.process.poll() is None:
        member.resume()  # a stopped process is killed all the same; resumed, it is tidier
        member.kill()


@contextmanager
def etcd_server(directory: Path) -> Iterator[str]:
    """Run an etcd of one member with its data in ``directory``; yield its client URL."""
    with etcd_cluster(directory, 1) as cluster:
        yield cluster.members[0].client_url


def _is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
