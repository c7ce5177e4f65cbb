"""The JavaScript client's unit tests (``node --test clients/js/``), run by pytest so that
``make test`` covers them. They need node (>= 20), not a browser."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Final

from tests.support.services import missing, require_binary

CLIENT_DIR: Final = Path(__file__).resolve().parents[2] / "clients" / "js"
NODE_TEST_TIMEOUT_S: Final = 120.0
NPM_TIMEOUT_S: Final = 300.0
TYPESCRIPT: Final = "typescript@5"


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
    for name in ("tidings.js", "core.js", "tidings.d.ts"):
        assert (static / name).read_bytes() == (CLIENT_DIR / name).read_bytes(), name


def test_the_typescript_declarations_type_check_an_application(tmp_path: Path) -> None:
    """tidings.d.ts is valid TypeScript and describes the API an application uses
    (tests/browser/typescript_use.ts, checked with tsc --strict)."""
    npm = require_binary("npm")
    installed = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(tmp_path), TYPESCRIPT],
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    if installed.returncode != 0:
        missing(f"npm could not install {TYPESCRIPT}: {installed.stderr[-500:]}")
    shutil.copy(CLIENT_DIR / "tidings.d.ts", tmp_path / "tidings.d.ts")
    shutil.copy(Path(__file__).with_name("typescript_use.ts"), tmp_path / "use.ts")
    options = ["--noEmit", "--strict", "--target", "es2022", "--module", "nodenext"]
    options += ["--moduleResolution", "nodenext", "--lib", "es2022,dom"]
    checked = subprocess.run(
        [str(tmp_path / "node_modules" / ".bin" / "tsc"), *options, "use.ts"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=NODE_TEST_TIMEOUT_S,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
