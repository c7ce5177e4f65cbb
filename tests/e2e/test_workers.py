"""``tidings serve --workers N``: several processes on one port sharing a Redis broker."""

from __future__ import annotations

import asyncio
import secrets
import signal
import threading
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY
from tests.e2e.test_redis_nodes import fresh_database
from tests.support.server import start_server
from tests.support.ws import WsClient, ws_client

pytestmark = pytest.mark.e2e

WORKERS: Final = 2
CLIENTS: Final = 24  # SO_REUSEPORT hashes each connection: 24 all on one worker is 2**-23
WORKER_DB: Final = 14


def wait_for_lines(log: list[str], marker: str, count: int, wait_s: float) -> None:
    """Block until ``log`` holds ``count`` lines with ``marker`` (it is filled by a thread)."""
    done = threading.Event()
    deadline = threading.Timer(wait_s, done.set)
    deadline.start()
    try:
        while sum(marker in line for line in log) < count and not done.wait(0.05):
            pass
    finally:
        deadline.cancel()
    assert sum(marker in line for line in log) >= count, "\n".join(log)


async def test_workers_share_one_port_and_every_client_gets_every_publication(
    tmp_path: Path,
) -> None:
    broker = fresh_database(WORKER_DB)
    server = start_server(
        extra=["--broker", broker, "--workers", str(WORKERS)],
        env={"TIDINGS_API_KEY": API_KEY},
    )
    try:
        # Each worker logs its own line once it serves its socket.
        wait_for_lines(server.log, "listening on http://", WORKERS, wait_s=20)
        channel = f"room:{secrets.token_hex(6)}"
        async with AsyncExitStack() as stack:
            clients: list[WsClient] = []
            nodes: set[str] = set()
            for _ in range(CLIENTS):
                client = await stack.enter_async_context(ws_client(server.ws_url))
                connected = await client.result("connect")
                nodes.add(connected["client"].split(".")[0])  # "<node id>.<n>"
                await client.result("subscribe", channel=channel)
                clients.append(client)
            assert len(nodes) == WORKERS
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                published = await http.post(
                    "/api/publish",
                    json={"channel": channel, "data": {"n": 1}},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                )
            assert published.status_code == 200
            received = await asyncio.gather(*(client.publications(1) for client in clients))
            assert all(pubs[0]["data"] == {"n": 1} for pubs in received)
            exit_code = await asyncio.to_thread(server.stop, signal.SIGTERM)
            goodbyes = [await client.next_push() for client in clients]
        assert exit_code == 0
        assert {(g["push"], g["code"], g["reconnect"]) for g in goodbyes} == {
            ("disconnect", 1001, True)
        }
    finally:
        server.kill()


def test_several_workers_with_the_memory_broker_are_refused() -> None:
    with pytest.raises(RuntimeError, match="needs a shared broker"):
        start_server(extra=["--workers", "2"])
