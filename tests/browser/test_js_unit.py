"""The JavaScript client's unit tests (``node --test clients/js/``), run by pytest so that
``make test`` covers them. They need node (>= 20), not a browser."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Final

from tests.support.services import require_binary

CLIENT_DIR: Final = Path(__file__).resolve().parents[2] / "clients" / "js"
NODE_TEST_TIMEOUT_S: Final = 120.0


def test_the_javascript_client_unit_tests_pass() -> None:
    node = require_binary("node")
    completed = subprocess.run(
        [node, "--test", f"{CLIENT_DIR}/"],
        capture_output=True,
        text=True,
        timeout=NODE_TEST_TIMEOUT_S,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-8000:] + completed.stderr[-4000:]
    assert "# fail 0" in completed.stdout


def test_the_server_serves_the_client_it_ships() -> None:
    static = Path(__file__).resolve().parents[2] / "src" / "tidings" / "server" / "static"
    for name in ("tidings.js", "core.js"):
        assert (static / name).read_bytes() == (CLIENT_DIR / name).read_bytes(), name
