"""External services the tests need (Redis, redis-server binaries), and what happens when
one is missing: on a developer's machine the test is skipped with the reason; under
``CI=true`` it fails, so a CI job can never pass by silently skipping its service tests.
"""

from __future__ import annotations

import os
import shutil
import socket
from typing import Final, NoReturn

import pytest

REDIS_HOST: Final = "127.0.0.1"
REDIS_PORT: Final = 6379
CONNECT_TIMEOUT_S: Final = 1.0


def is_ci() -> bool:
    """Whether the tests run in CI (the ``CI`` environment variable is ``true``)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(reason: str) -> NoReturn:
    """Skip the current test because of ``reason``, or fail it under ``CI=true``."""
    if is_ci():
        pytest.fail(f"{reason} (CI=true: service tests must not be skipped)", pytrace=False)
    pytest.skip(reason)


def is_reachable(host: str, port: int, timeout_s: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` can be opened now."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def require_service(host: str, port: int, name: str) -> None:
    """Skip (locally) or fail (under ``CI=true``) unless ``name`` listens on ``host:port``."""
    if not is_reachable(host, port):
        missing(f"{name} is not reachable at {host}:{port}; start it to run this test")


def require_binary(name: str) -> str:
    """Return the path of the executable ``name``; skip or fail if it is not installed."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (not on PATH); install it to run this test")
    return path
