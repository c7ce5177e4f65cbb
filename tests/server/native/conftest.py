"""Fixtures of the native server's tests: a ``NativeServer`` on a real socket, in this
process (its logs reach ``caplog``, its objects the test)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from tests.support.raw_http import API_KEY, TIMEOUT_S
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.native.server import NativeServer

PING_INTERVAL_S = 0.2


@dataclass
class Served:
    """A native server listening on ``port``."""

    port: int
    server: NativeServer
    task: asyncio.Task[None]


@asynccontextmanager
async def serving(ping_interval_s: float = PING_INTERVAL_S) -> AsyncIterator[Served]:
    """A native server on a free loopback port, stopped gracefully on exit."""
    # The socket listens before the server starts: early connections wait in the backlog.
    listener = socket.create_server(("127.0.0.1", 0))
    port: int = listener.getsockname()[1]
    server = NativeServer(
        TidingsApp(Settings(allowed_origins=("https://ok.example",), api_key=API_KEY)),
        ping_interval_s=ping_interval_s,
    )
    task = asyncio.create_task(server.serve(listener, handle_signals=False))
    try:
        yield Served(port, server, task)
    finally:
        server.request_stop()
        await asyncio.wait_for(task, TIMEOUT_S)
        listener.close()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A native server that pings every WebSocket every 0.2 s."""
    async with serving() as server:
        yield server
