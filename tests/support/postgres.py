"""PostgreSQL for tests: the machine's server (database ``test``, user ``postgres``), a
schema of the session's own on it, the PostgreSQL broker factories of the contract
suite, and a throw-away cluster of a test's own (initdb/pg_ctl, run as the ``postgres``
user) for tests that stop or restart the server.

The session's schema is dropped at exit (``atexit``: the contract suite reaches it
through factories, which cannot request fixtures). Tests never stop the machine's
server: a restart test starts its own cluster on a free port in a temp directory and
stops that one.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import mkdtemp
from typing import Final

import psycopg
from psycopg import sql

from tests.support.redis_cluster import BrokerSetup, free_port, wait_until
from tests.support.services import missing, require_service
from tidings.brokers.base import Broker
from tidings.brokers.postgres import PostgresBroker

POSTGRES_HOST: Final = "127.0.0.1"
POSTGRES_PORT: Final = 5432
POSTGRES_URL: Final = f"postgres://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/test"
SESSION_SCHEMA: Final = f"tidings_test_{secrets.token_hex(4)}"
_made_schemas: set[str] = set()


def unique_schema() -> str:
    """Return a schema name no other test uses; it is dropped at exit."""
    schema = f"tidings_test_{secrets.token_hex(6)}"
    _made_schemas.add(schema)
    return schema


def require_postgres() -> None:
    """Skip (locally) or fail (under ``CI=true``) unless the machine's PostgreSQL listens."""
    require_service(POSTGRES_HOST, POSTGRES_PORT, "PostgreSQL")


def drop_schema(schema: str, url: str = POSTGRES_URL) -> None:
    """Drop ``schema`` and everything in it, if it exists."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@atexit.register
def _drop_made_schemas() -> None:
    for schema in [SESSION_SCHEMA, *_made_schemas]:
        with contextlib.suppress(psycopg.Error):  # the server is gone: nothing to clean
            drop_schema(schema)


def make_postgres_broker(setup: BrokerSetup) -> Broker:
    """A PostgreSQL broker woken by LISTEN/NOTIFY, on the session's schema."""
    require_postgres()
    return PostgresBroker(
        f"{POSTGRES_URL}?schema={SESSION_SCHEMA}",
        setup.namespaces,
        clock=setup.clock,
        dedupe=setup.dedupe,
    )


def make_pull_postgres_broker(setup: BrokerSetup) -> Broker:
    """A pure-pull PostgreSQL broker (polling, no LISTEN), on the session's schema."""
    require_postgres()
    return PostgresBroker(
        f"{POSTGRES_URL}?schema={SESSION_SCHEMA}&notify=false&poll_interval=0.05",
        setup.namespaces,
        clock=setup.clock,
        dedupe=setup.dedupe,
    )


def postgres_binary(name: str) -> str:
    """Return the path of PostgreSQL's ``name`` (initdb, pg_ctl); skip or fail if absent."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        missing(f"PostgreSQL's {name} is not installed (/usr/lib/postgresql/*/bin)")
    if shutil.which("runuser") is None or os.geteuid() != 0:
        missing("a cluster of the test's own needs root (to run initdb as user postgres)")
    return found[-1]


@dataclass
class LocalPostgres:
    """A PostgreSQL cluster of a test's own, in a temp directory, on a free port; run
    as user ``postgres`` (initdb refuses root). ``stop`` and ``start`` restart it with
    its data."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(mkdtemp(prefix="tidings-pg-")))

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *command: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=60,
        )

    def create(self) -> LocalPostgres:
        """Make the cluster (trust auth, no fsync: test data) and start it."""
        shutil.chown(self.directory, "postgres")
        initdb = postgres_binary("initdb")
        self._as_postgres(
            initdb, "-D", str(self.directory / "data"), "-A", "trust", "-U", "postgres"
        )
        return self.start()

    def start(self) -> LocalPostgres:
        """Start the cluster; return once it accepts connections."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = postgres_binary("pg_ctl")
        data = str(self.directory / "data")
        log = str(self.directory / "log")
        self._as_postgres(pg_ctl, "-D", data, "-l", log, "-o", options, "-w", "start")
        wait_until("the local PostgreSQL accepts connections", self.is_up)
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``immediate``: as a crash would)."""
        pg_ctl = postgres_binary("pg_ctl")
        self._as_postgres(pg_ctl, "-D", str(self.directory / "data"), "-m", mode, "-w", "stop")

    def is_up(self) -> bool:
        try:
            with psycopg.connect(self.url, connect_timeout=1):
                return True
        except psycopg.Error:
            return False

    def destroy(self) -> None:
        """Stop the cluster if it runs and delete its directory."""
        if (self.directory / "data" / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
