"""Graceful shutdown and heartbeats (docs/protocol.md §3): on SIGTERM or SIGINT every client is
told to reconnect (``disconnect`` push, close 1001), new connections are turned away while
the node drains, and the process ends; an idle client receives ``{"push": "ping"}``."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Final

import pytest

from tests.e2e.conftest import api_client, goodbye_of, serving
from tests.support.raw_ws import stalled_client
from tests.support.server import STOP_TIMEOUT_S, ServerProcess
from tests.support.ws import Frame, ws_client

GOING_AWAY = {
    "push": "disconnect",
    "code": 1001,
    "reason": "server shutting down",
    "reconnect": True,
}
BACKLOG_PUBLICATIONS: Final = 200
BACKLOG_DATA_BYTES: Final = 50_000
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def going_away(push: Frame) -> Frame:
    """``push`` without its ``delay`` (asserted to be a whole number of ms first)."""
    rest = dict(push)
    delay = rest.pop("delay", None)
    assert isinstance(delay, int), push
    assert delay >= 0, push
    return rest


async def wait_exit(process: ServerProcess) -> int:
    """Await the end of a process that was sent a signal; return its exit code."""
    return await asyncio.to_thread(process.process.wait, STOP_TIMEOUT_S)


@pytest.mark.parametrize("signum", SIGNALS)
async def test_signal_tells_every_client_to_reconnect_then_closes_with_1001(
    server: ServerProcess, signum: int
) -> None:
    async with (
        ws_client(server.ws_url) as subscriber,
        ws_client(server.ws_url) as idle,
        ws_client(server.ws_url) as other,
    ):
        await subscriber.result("subscribe", channel="room:1")
        await other.result("subscribe", channel="room:2")
        await idle.result("ping")  # answered: registered
        # Signal without blocking: the clients must be free to answer the close.
        server.process.send_signal(signum)
        goodbyes = await asyncio.gather(*(goodbye_of(c) for c in (subscriber, idle, other)))
    exit_code = await wait_exit(server)
    assert [(going_away(push), code) for push, code in goodbyes] == [(GOING_AWAY, 1001)] * 3
    assert exit_code in (0, -signum, 1)  # the exit code itself: see the tests below
    assert any("stopped" in line for line in server.log)


async def test_sigterm_ends_the_process_with_exit_code_0(server: ServerProcess) -> None:
    async with ws_client(server.ws_url) as client:
        await client.result("ping")
        server.process.send_signal(signal.SIGTERM)
        await goodbye_of(client)
    assert await wait_exit(server) == 0


async def test_sigint_ends_the_process_with_exit_code_0(server: ServerProcess) -> None:
    async with ws_client(server.ws_url) as client:
        await client.result("ping")
        server.process.send_signal(signal.SIGINT)
        await goodbye_of(client)
    assert await wait_exit(server) == 0
    assert not any("Aborted" in line or "Traceback" in line for line in server.log)


async def test_while_draining_new_connections_are_sent_elsewhere_and_ready_is_503(
    config_file: Path,
) -> None:
    # A client that reads nothing while far more than the kernel buffers can hold (4 MiB
    # send buffer at most) is queued for it: its goodbye waits behind that queue, so the
    # node keeps draining until the test reads it.
    env = {"TIDINGS_OUTBOUND_BUFFER": "64MiB", "TIDINGS_SHUTDOWN_TIMEOUT": "60s"}
    blob = "q" * BACKLOG_DATA_BYTES
    with serving(config_file, env) as server:
        async with (
            api_client(server) as api,
            stalled_client(server.ws_url) as lingering,
            ws_client(server.ws_url) as client,
        ):
            await lingering.request({"op": "subscribe", "id": 1, "channel": "room:backlog"})
            for n in range(1, BACKLOG_PUBLICATIONS + 1):
                await api.publish("room:backlog", {"n": n, "blob": blob})
            await client.result("ping")
            server.process.send_signal(signal.SIGTERM)
            push, code = await goodbye_of(client)
            assert (going_away(push), code) == (GOING_AWAY, 1001)  # the drain has begun

            ready = await api.http.get("/ready")
            async with ws_client(server.ws_url) as latecomer:
                turned_away = await goodbye_of(latecomer)

            lingering_code = await lingering.read_until_closed(wait_s=60.0)
        exit_code = await wait_exit(server)
    assert ready.status_code == 503
    assert ready.json()["error"]["code"] == "unavailable"
    assert turned_away == (
        {"push": "disconnect", "code": 4503, "reason": "server draining", "reconnect": True},
        4503,
    )
    # The drain flushed what was queued for the lingering client, then said goodbye.
    pubs = [frame for frame in lingering.frames if frame.get("push") == "pub"]
    assert [p["offset"] for p in pubs] == list(range(1, BACKLOG_PUBLICATIONS + 1))
    assert going_away(lingering.frames[-1]) == GOING_AWAY
    assert lingering_code == 1001
    assert exit_code in (0, -signal.SIGTERM)


async def test_idle_client_receives_ping_pushes(config_file: Path) -> None:
    with serving(config_file, {"TIDINGS_PING_INTERVAL": "0.3"}) as server:
        async with ws_client(server.ws_url) as client:
            connected = await client.result("connect")
            first = await client.next_push()
            second = await client.next_push()
    assert connected["ping"] == 0.3
    assert first == second == {"push": "ping"}


async def test_ping_command_is_answered_with_an_empty_result(server: ServerProcess) -> None:
    async with ws_client(server.ws_url) as client:
        reply = await client.request("ping")
    assert reply == {"id": 1, "result": {}}
