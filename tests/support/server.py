"""A real tidings server process for end-to-end tests, on a free loopback port (or
several, sharing a broker).

The server is started as ``python -m tidings serve``; readiness is the moment it prints
that it is listening (read from its log, not guessed with a sleep). The server backend
is the default (native) unless ``TIDINGS_TEST_SERVER_BACKEND`` names another
(``uvicorn``): ``make test`` runs the suites that start servers once per backend.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

# uvicorn's line, or the native server's and a uvicorn --workers worker's own (uvicorn
# logs none when given a socket).
READY_MARKERS: Final = ("Uvicorn running on", "listening on http://")
SERVER_BACKEND_VARIABLE: Final = "TIDINGS_TEST_SERVER_BACKEND"
START_TIMEOUT_S: Final = 20.0
STOP_TIMEOUT_S: Final = 20.0


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    """A running ``tidings serve`` and its log."""

    port: int
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    _ready: threading.Event = field(default_factory=threading.Event)
    _pump: threading.Thread | None = None
    _listening: bool = False

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        """``ws://127.0.0.1:<port>/ws``."""
        return f"ws://127.0.0.1:{self.port}/ws"

    def _pump_log(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            if any(marker in line for marker in READY_MARKERS):
                self._listening = True
                self._ready.set()
        self._ready.set()  # the process ended: stop waiting either way

    def wait_ready(self) -> None:
        """Block until the server listens; raise with its log if it died instead."""
        self._pump = threading.Thread(target=self._pump_log, daemon=True)
        self._pump.start()
        self._ready.wait(START_TIMEOUT_S)
        if not self._listening or self.process.poll() is not None:
            self.kill()
            raise RuntimeError("tidings serve did not start:\n" + "\n".join(self.log))

    def _reap(self) -> int:
        code = self.process.wait(STOP_TIMEOUT_S)
        if self._pump is not None:
            self._pump.join(STOP_TIMEOUT_S)  # EOF once the process is gone
        if self.process.stderr is not None:
            self.process.stderr.close()
        return code

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` and wait for the exit; return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        return self._reap()

    def kill(self) -> None:
        """SIGKILL: no drain, no goodbye."""
        if self.process.poll() is None:
            self.process.kill()
        self._reap()


def start_server(
    *arguments: str,
    port: int | None = None,
    data: Path | None = None,
    config: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra: Sequence[str] = (),
) -> ServerProcess:
    """Start ``tidings serve`` and return it once it listens."""
    port = port or free_port()
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(port), *arguments]
    backend = os.environ.get(SERVER_BACKEND_VARIABLE)
    if backend:
        command += ["--server-backend", backend]
    if data is not None:
        command += ["--data", str(data)]
    if config is not None:
        command += ["--config", str(config)]
    command += list(extra)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(env or {})
    process = subprocess.Popen(
        command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=environment
    )
    server = ServerProcess(port, process)
    server.wait_ready()
    return server


@contextmanager
def nodes_sharing(
    broker: str, count: int, directory: Path, *, config: str, env: Mapping[str, str]
) -> Iterator[list[ServerProcess]]:
    """Run ``count`` nodes sharing ``broker`` (a URL), each with ``config`` (the text of
    the ``tidings.toml`` written in ``directory``) and ``env``; kill them all on exit."""
    config_file = directory / "tidings.toml"
    config_file.write_text(config)
    servers: list[ServerProcess] = []
    try:
        for _ in range(count):
            servers.append(start_server(config=config_file, env=env, extra=["--broker", broker]))
        yield servers
    finally:
        for server in servers:
            server.kill()
