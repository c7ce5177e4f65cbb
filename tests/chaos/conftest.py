"""Fixtures of the fault tests: the namespaces their nodes serve, and the ``chaos`` marker
on every test here (``pytest -m chaos`` runs them alone; they run in the normal suite too)."""

from __future__ import annotations

from pathlib import Path

import pytest

API_KEY = "chaos-api-key"
CONFIG = """
[namespaces.room]
history_size = 1000
"""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos/" in item.nodeid:
            item.add_marker(pytest.mark.chaos)
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(CONFIG)
    return path
