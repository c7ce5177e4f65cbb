"""``tidings serve`` that cannot start: one line on stderr, never a traceback, and an
exit status per cause (cli/serve.py, runner.ExitStatus; docs/configuration.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.server import SERVER_BACKEND_VARIABLE
from tidings.server.runner import ExitStatus

EXIT_TIMEOUT_S: Final = 30.0


def serve(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``tidings serve ARGUMENTS`` (on the backend under test) until it exits."""
    command = [sys.executable, "-m", "tidings", "serve", *arguments]
    backend = os.environ.get(SERVER_BACKEND_VARIABLE)
    if backend:
        command += ["--server-backend", backend]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(env or {})
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        env=environment,
        check=False,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, *parts: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr
    assert len(lines) == 1, done.stderr
    for part in parts:
        assert part in lines[0]
    assert done.returncode == status, done.stderr


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        yield other.getsockname()[1]


def test_a_port_in_use_is_one_line_and_exit_status_3(taken_port: int) -> None:
    done = serve("--port", str(taken_port))
    assert_one_line(done, ExitStatus.LISTEN, f"cannot listen on 127.0.0.1:{taken_port}", "in use")
    assert "started" not in done.stderr  # nothing started before the bind failed


def test_a_host_that_does_not_resolve_is_one_line_and_exit_status_3() -> None:
    # With a key, as a node bound beyond loopback must have: the bind is what fails.
    done = serve("--host", "no-such-host.invalid", env={"TIDINGS_API_KEY": "a-key"})
    assert_one_line(
        done, ExitStatus.LISTEN, "cannot listen on no-such-host.invalid", "unknown host"
    )


def test_a_port_in_use_with_workers_is_one_line_and_exit_status_3(taken_port: int) -> None:
    done = serve("--port", str(taken_port), "--workers", "2", "--broker", "redis://127.0.0.1:1/0")
    assert_one_line(done, ExitStatus.LISTEN, "in use")


def test_a_broker_whose_extra_is_missing_names_the_pip_install(tmp_path: Path) -> None:
    # A module named redis that is not there: what a node without the extra sees.
    (tmp_path / "redis.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'redis'\", name='redis')\n"
    )
    done = serve("--broker", "redis://127.0.0.1:6379/0", env={"PYTHONPATH": str(tmp_path)})
    assert_one_line(done, ExitStatus.MISSING_EXTRA, "pip install 'tidings[redis]'")


def test_an_unknown_broker_scheme_lists_the_known_ones() -> None:
    done = serve("--broker", "amqp://127.0.0.1:5672")
    assert_one_line(done, ExitStatus.UNKNOWN_BROKER, "'amqp://127.0.0.1:5672'", "nats://")


def test_a_data_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "data"
    file.write_text("not a directory")
    done = serve("--data", str(file))
    assert_one_line(done, ExitStatus.DATA_DIRECTORY, str(file), "not a directory")


def test_a_data_directory_that_cannot_be_created_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # works as root too, unlike a read-only directory
    done = serve("--data", str(tmp_path / "file" / "data"))
    assert_one_line(done, ExitStatus.DATA_DIRECTORY, "cannot be used", "not a directory")


def test_an_invalid_setting_is_one_line_and_exit_status_1() -> None:
    done = serve(env={"TIDINGS_PORTT": "9000"})
    assert_one_line(done, ExitStatus.CONFIG, "unknown setting 'portt'")


def test_a_broker_setting_of_the_file_the_broker_does_not_read_is_one_line(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('broker = "redis://127.0.0.1:1/0"\n[brokers.redis]\nprefx = "app1"\n')
    done = serve("--config", str(config))
    assert_one_line(
        done,
        ExitStatus.CONFIG,
        "brokers.redis: unknown setting 'prefx'; known: ['batch', 'prefix', 'trust_restarts']",
    )
