"""What the broker tests share: the NATS stream and bucket of this session are deleted
at its end (their names start with a prefix of the session's own)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest

from tests.support.nats_server import SESSION_PREFIX, SHARED_NATS_URL, delete_prefix


@pytest.fixture(scope="session", autouse=True)
def _delete_the_sessions_nats_stream() -> Iterator[None]:
    yield
    with contextlib.suppress(Exception):  # NATS down, or never used: nothing to delete
        asyncio.run(delete_prefix(SHARED_NATS_URL, SESSION_PREFIX))
