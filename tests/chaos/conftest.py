"""Fixtures of the fault tests: the API key and namespaces their nodes serve.

Every module here is marked ``chaos`` (``pytest -m chaos`` runs them alone; they run in
the normal suite too)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.redis_cluster import RedisServer
from tests.support.server import ServerProcess, start_server

API_KEY = "chaos-api-key"
CONFIG = """
[namespaces.room]
history_size = 1000
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of the test's own, on a free port: the tests stop, freeze and restore it."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        # A test that failed while Redis was frozen (SIGSTOP) leaves it so: wake it to stop it.
        if server.process is not None and server.process.poll() is None:
            os.kill(server.process.pid, signal.SIGCONT)
        server.stop()


@contextmanager
def nodes_on(broker_url: str, count: int, config_file: Path) -> Iterator[list[ServerProcess]]:
    """Run ``count`` nodes sharing ``broker_url``, with the API key; kill them all on exit."""
    env = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_BROKER": broker_url}
    started: list[ServerProcess] = []
    try:
        for _ in range(count):
            started.append(start_server(config=config_file, env=env))
        yield started
    finally:
        for node in started:
            node.kill()
