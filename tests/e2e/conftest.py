"""Fixtures for end-to-end tests: a real ``tidings serve`` process per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess, start_server

API_KEY = "e2e-api-key"
JWT_SECRET = "e2e-jwt-secret-that-is-long-enough-for-hs256"

# Namespaces the end-to-end tests use, on top of the defaults (public default, user).
CONFIG = """
[namespaces.room]
client_publish = true
presence = true
history_size = 2000

[namespaces.small]
history_size = 5

[namespaces.tiny]
max_data_size = "1KiB"

[namespaces.secret]
policy = "token"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The e2e TOML configuration."""
    path = tmp_path / "tidings.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def server(config_file: Path) -> Iterator[ServerProcess]:
    """A memory-broker server with an API key and no JWT secret (anonymous clients)."""
    process = start_server(config=config_file, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def auth_server(config_file: Path) -> Iterator[ServerProcess]:
    """A server that requires HS256 JWTs signed with ``JWT_SECRET``."""
    process = start_server(
        config=config_file,
        env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": JWT_SECRET},
    )
    try:
        yield process
    finally:
        process.kill()
