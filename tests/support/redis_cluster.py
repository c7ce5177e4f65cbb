"""Redis for tests: real local ``redis-server`` processes (a dedicated server a test may
stop, restart or kill; a Redis Cluster of three masters) and the Redis broker factories
of the broker contract suite.

Each server runs in the foreground (``--daemonize no``) as a child of the test process,
without persistence unless asked, on a free loopback port. Readiness is observed, never
guessed: a server is up once it answers ``PING``; the cluster is up once every node
reports ``cluster_state:ok`` with all 16384 slots assigned (a bounded poll).

The cluster is shared by the whole test session (starting one takes about a second):
``shared_cluster()`` starts it on first use, the ``redis_cluster`` fixture stops it at
the end of the session, and an ``atexit`` hook stops it if no fixture did (the broker
contract suite reaches it through a factory, which cannot request fixtures).
"""

from __future__ import annotations

import atexit
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp
from typing import Final, Protocol

import pytest

from tests.support.services import REDIS_HOST, REDIS_PORT, require_binary, require_service
from tidings.brokers.base import Broker
from tidings.brokers.redis import RedisBroker
from tidings.clock import Clock
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces

START_TIMEOUT_S: Final = 15.0
STOP_TIMEOUT_S: Final = 10.0
POLL_INTERVAL_S: Final = 0.05
CLUSTER_MASTERS: Final = 3
CLUSTER_BUS_OFFSET: Final = 10_000
CLUSTER_NODE_TIMEOUT_MS: Final = 2_000  # how long a silent master stays a master
FAILOVER_TIMEOUT_S: Final = 30.0
ALL_SLOTS: Final = 16_384


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port(*, with_cluster_bus: bool = False) -> int:
    """Return a free loopback port (and, if asked, its cluster bus port + 10000 free too)."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if not with_cluster_bus:
            return port
        if port + CLUSTER_BUS_OFFSET < 65_536 and _is_free(port + CLUSTER_BUS_OFFSET):
            return port


def redis_cli(port: int, *command: str, timeout_s: float = STOP_TIMEOUT_S) -> str:
    """Run ``redis-cli -p port command...`` and return its output ("" if it failed)."""
    cli = require_binary("redis-cli")
    try:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), *command],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout if done.returncode == 0 else ""


def wait_until(
    condition: str, check: Callable[[], bool], timeout_s: float = START_TIMEOUT_S
) -> None:
    """Poll ``check()`` (a bounded poll of an observable condition) until it is true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting until {condition}")
        time.sleep(POLL_INTERVAL_S)


@dataclass
class RedisServer:
    """One ``redis-server`` child process on a fixed port, restartable on that port."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra: Sequence[str] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (again, on the same port) and return once it answers PING."""
        assert self.process is None or self.process.poll() is not None, "already running"
        self.directory.mkdir(parents=True, exist_ok=True)
        arguments = [
            require_binary("redis-server"),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *self.extra,
        ]  # fmt: skip
        self.process = subprocess.Popen(
            arguments, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(f"redis-server on {self.port} answers PING", self._answers_ping)
        return self

    def _answers_ping(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server on port {self.port} exited at start")
        return redis_cli(self.port, "PING", timeout_s=1.0).strip() == "PONG"

    def stop(self) -> None:
        """Stop the server abruptly (SIGKILL: no save, no goodbye) and wait for it."""
        process = self.process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def cli(self, *command: str) -> str:
        """Run one ``redis-cli`` command against this server."""
        return redis_cli(self.port, *command)

    def freeze(self) -> None:
        """SIGSTOP the server: it neither answers nor replicates until ``thaw``."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen server."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


@dataclass
class LocalRedisCluster:
    """A Redis Cluster of ``CLUSTER_MASTERS`` masters, and replicas if asked."""

    servers: list[RedisServer]
    directory: Path | None = None  # removed on stop, if given

    @property
    def url(self) -> str:
        """``redis-cluster://127.0.0.1:<first port>``: one startup node is enough."""
        return f"redis-cluster://127.0.0.1:{self.servers[0].port}"

    @property
    def ports(self) -> list[int]:
        """The servers' ports (masters first, when started by ``start_cluster``)."""
        return [server.port for server in self.servers]

    def running(self) -> list[RedisServer]:
        """The servers not stopped."""
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def is_ok(self) -> bool:
        """Whether every running node says the cluster is ok, with all slots assigned."""
        for port in [server.port for server in self.running()]:
            info = redis_cli(port, "CLUSTER", "INFO", timeout_s=1.0)
            if "cluster_state:ok" not in info:
                return False
            if f"cluster_slots_assigned:{ALL_SLOTS}" not in info:
                return False
            if f"cluster_known_nodes:{len(self.servers)}" not in info:
                return False
        return True

    def stop(self) -> None:
        """Stop every node (and remove the directory, if the cluster owns one)."""
        for server in self.servers:
            server.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def owner_of(self, slot: int, asked: int | None = None) -> int:
        """The port of the master serving ``slot``, as the node on port ``asked`` sees it."""
        asked = asked or self.running()[0].port
        for line in redis_cli(asked, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "master" not in fields[2] or "fail" in fields[2]:
                continue
            for served in fields[8:]:
                first, _, last = served.partition("-")
                if first.isdigit() and int(first) <= slot <= int(last or first):
                    return int(fields[1].split(":")[1].split("@")[0])
        raise RuntimeError(f"no master serves slot {slot}")

    def move_slot(self, slot: int, target: int) -> None:
        """Move ``slot`` (and its keys) to the master on port ``target``, as a resharding
        does: IMPORTING/MIGRATING, MIGRATE the keys, then SETSLOT NODE on every master."""
        source = self.owner_of(slot)
        source_id = redis_cli(source, "CLUSTER", "MYID").strip()
        target_id = redis_cli(target, "CLUSTER", "MYID").strip()
        redis_cli(target, "CLUSTER", "SETSLOT", str(slot), "IMPORTING", source_id)
        redis_cli(source, "CLUSTER", "SETSLOT", str(slot), "MIGRATING", target_id)
        while keys := redis_cli(source, "CLUSTER", "GETKEYSINSLOT", str(slot), "100").split():
            migrated = redis_cli(
                source, "MIGRATE", "127.0.0.1", str(target), "", "0", "5000", "KEYS", *keys
            )
            if migrated.strip() != "OK":
                raise RuntimeError(f"MIGRATE of slot {slot} failed: {migrated!r}")
        for port in [target, source, *(p for p in self.ports if p not in (source, target))]:
            redis_cli(port, "CLUSTER", "SETSLOT", str(slot), "NODE", target_id)
        wait_until(f"every node sees slot {slot} on {target}", lambda: self._agree(slot, target))

    def _agree(self, slot: int, target: int) -> bool:
        return all(self.owner_of(slot, port) == target for port in self.ports)

    def server_on(self, port: int) -> RedisServer:
        """The server listening on ``port``."""
        return next(server for server in self.servers if server.port == port)

    def replicas_in_sync(self) -> bool:
        """Whether every replica's link to its master is up."""
        roles = [redis_cli(port, "INFO", "replication", timeout_s=1.0) for port in self.ports]
        replicas = [role for role in roles if "role:slave" in role]
        masters = [role for role in roles if "role:master" in role]
        return (
            len(replicas) + len(masters) == len(self.ports)
            and all("master_link_status:up" in role for role in replicas)
            and len(replicas) > 0
        )

    def cut_off_replica_of(self, port: int) -> RedisServer:
        """Freeze a replica of the master on ``port`` and drop its replication link, so
        it misses every write from now on (as a lagging replica does); return it."""
        replica = self.replica_of(port)
        replica.freeze()
        # Frozen, it would still read later what the link had already carried: cut it.
        redis_cli(port, "CLIENT", "KILL", "TYPE", "replica")
        return replica

    def replica_of(self, port: int) -> RedisServer:
        """A replica of the master on ``port``."""
        master_id = redis_cli(port, "CLUSTER", "MYID").strip()
        for line in redis_cli(port, "CLUSTER", "NODES").splitlines():
            fields = line.split()
            if "slave" in fields[2] and fields[3] == master_id:
                return self.server_on(int(fields[1].split(":")[1].split("@")[0]))
        raise RuntimeError(f"the master on {port} has no replica")

    def kill_master_of(self, slot: int, successor: RedisServer | None = None) -> int:
        """SIGKILL the master serving ``slot`` and wait until one of its replicas took
        over (every running node agrees, the cluster ok again); return the new master.

        With ``successor`` (a replica of it, maybe frozen), thaw it and have it take over
        at once (``CLUSTER FAILOVER TAKEOVER``), rather than after the failure detection
        and election, whose timing a loaded machine stretches."""
        old = self.owner_of(slot)
        self.server_on(old).stop()
        if successor is not None:
            successor.thaw()
            successor.cli("CLUSTER", "FAILOVER", "TAKEOVER")

        def taken_over() -> bool:
            running = [server.port for server in self.running()]
            try:
                owners = {self.owner_of(slot, port) for port in running}
            except RuntimeError:
                return False  # the slot is not served while the failover is under way
            return len(owners) == 1 and old not in owners and self.is_ok()

        wait_until(f"a replica took slot {slot} over from {old}", taken_over, FAILOVER_TIMEOUT_S)
        return self.owner_of(slot)


def start_cluster(
    directory: Path, masters: int = CLUSTER_MASTERS, replicas: int = 0
) -> LocalRedisCluster:
    """Start ``masters`` cluster-enabled servers (and ``replicas`` per master), join them,
    and wait for ``cluster_state:ok``."""
    servers = []
    try:
        for _ in range(masters * (1 + replicas)):
            port = free_port(with_cluster_bus=True)
            extra = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"nodes-{port}.conf",
                "--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS),
            ]  # fmt: skip
            servers.append(RedisServer(directory / str(port), port, extra).start())
        cluster = LocalRedisCluster(servers)
        nodes = [f"127.0.0.1:{port}" for port in cluster.ports]
        options = ["--cluster-replicas", str(replicas), "--cluster-yes"]
        created = subprocess.run(
            [require_binary("redis-cli"), "--cluster", "create", *nodes, *options],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT_S,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        wait_until("the cluster is ok on every node", cluster.is_ok)
        if replicas:
            wait_until("every replica replicates its master", cluster.replicas_in_sync)
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return cluster


_shared: LocalRedisCluster | None = None


def shared_cluster() -> LocalRedisCluster:
    """Return the session's cluster, starting it on first use (stopped at exit)."""
    global _shared  # noqa: PLW0603  (one cluster per test process, on purpose)
    if _shared is None:
        directory = Path(mkdtemp(prefix="tidings-redis-cluster-"))
        _shared = start_cluster(directory)
        _shared.directory = directory
        atexit.register(_shared.stop)
    return _shared


def stop_shared_cluster() -> None:
    """Stop the session's cluster if it was started."""
    global _shared  # noqa: PLW0603
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalRedisCluster]:
    """A 3-master Redis Cluster for the session; skips (fails under CI) without redis-server."""
    yield shared_cluster()
    stop_shared_cluster()


# -- broker factories for the contract suite -------------------------------------------

SHARED_REDIS_URL: Final = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix=tidings-test"


class BrokerSetup(Protocol):
    """What the contract suite gives a broker factory (its ``BrokerSetup``)."""

    @property
    def namespaces(self) -> Namespaces: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def dedupe(self) -> DedupeOptions: ...


def make_redis_broker(setup: BrokerSetup) -> Broker:
    """A Redis broker on the shared Redis (channels are unique per test: no cleanup)."""
    require_service(REDIS_HOST, REDIS_PORT, "Redis")
    return RedisBroker(SHARED_REDIS_URL, setup.namespaces, clock=setup.clock, dedupe=setup.dedupe)


def make_redis_cluster_broker(setup: BrokerSetup) -> Broker:
    """A Redis broker on the session's local Redis Cluster (started on first use)."""
    return RedisBroker(
        shared_cluster().url, setup.namespaces, clock=setup.clock, dedupe=setup.dedupe
    )
