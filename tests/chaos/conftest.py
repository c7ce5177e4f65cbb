"""Fixtures of the fault tests: the API key and namespaces their nodes serve.

Every module here is marked ``chaos`` (``pytest -m chaos`` runs them alone; they run in
the normal suite too)."""

from __future__ import annotations

from pathlib import Path

import pytest

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
