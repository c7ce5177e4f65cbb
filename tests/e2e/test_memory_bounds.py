"""A node's memory stays bounded whatever a client does (PROTOCOL.md §2.5, issue #11):
measured as the resident memory of a real ``tidings serve`` process (``/proc``) before
and during the abuse, on whichever server backend the suite runs with.

A client that sends commands without reading their replies is held back: once its
replies unsent pass the outbound bound, the node reads no further command of it until
they leave. The moment it does so it logs (DEBUG) that the client's commands wait:
the tests await that line, then measure.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Final

import pytest

from tests.e2e.conftest import API_KEY, CONFIG
from tests.support.raw_ws import StalledClient, stalled_client
from tests.support.rss import KIB, MIB, rss_bytes
from tests.support.server import ServerProcess, start_server
from tests.support.wsframes import client_frame

FLOOD_BYTES: Final = 24 * MIB
BLOCK_BYTES: Final = 256 * KIB
GROWTH_BOUND_BYTES: Final = 32 * MIB
# Not a timing: how long the test waits for the node to either hold the client back or
# read the whole flood, before it gives up and fails.
ABUSE_TIMEOUT_S: Final = 120.0
HELD_LINE: Final = "commands wait"


@pytest.fixture(scope="module")
def debug_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node logging at DEBUG (the tests await its 'commands wait' line), with a low
    command rate so that most pings of a flood are over it."""
    config = tmp_path_factory.mktemp("bounds") / "tidings.toml"
    config.write_text(CONFIG)
    env = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_COMMAND_RATE": "10", "TIDINGS_COMMAND_BURST": "10"}
    process = start_server("--log-level", "debug", config=config, env=env)
    try:
        yield process
    finally:
        process.kill()


async def _log_line(server: ServerProcess, text: str, start: int) -> None:
    """Return once a line of the server's log after line ``start`` contains ``text``."""
    seen = start
    while True:
        lines = server.log[seen:]
        if any(text in line for line in lines):
            return
        seen += len(lines)
        await asyncio.sleep(0.05)  # the log is read by a thread: look again shortly


async def _flood(client: StalledClient, frame: bytes, pid: int, peak: list[int]) -> None:
    """Write ``FLOOD_BYTES`` of ``frame`` without reading; note the node's RSS after each
    block the kernel took."""
    block = frame * (BLOCK_BYTES // len(frame))
    sent = 0
    while sent < FLOOD_BYTES:
        client.writer.write(block)
        await client.writer.drain()
        sent += len(block)
        peak[0] = max(peak[0], rss_bytes(pid))


@pytest.mark.parametrize(
    "command",
    [
        pytest.param({"id": 1, "op": "nope"}, id="bad-commands"),
        pytest.param({"id": 1, "op": "ping"}, id="pings-past-the-rate-limit"),
    ],
)
async def test_commands_sent_without_reading_their_replies_keep_the_node_bounded(
    debug_node: ServerProcess, command: dict[str, object]
) -> None:
    pid = debug_node.process.pid
    async with stalled_client(debug_node.ws_url) as client:
        await client.request({"id": 0, "op": "ping"})  # the session is up
        log_start = len(debug_node.log)
        baseline = rss_bytes(pid)
        peak = [baseline]
        flood = asyncio.create_task(
            _flood(client, client_frame(0x1, json.dumps(command).encode()), pid, peak)
        )
        held = asyncio.create_task(_log_line(debug_node, HELD_LINE, log_start))
        done, _ = await asyncio.wait(
            {flood, held}, timeout=ABUSE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        peak[0] = max(peak[0], rss_bytes(pid))
        for task in (flood, held):
            task.cancel()
        await asyncio.gather(flood, held, return_exceptions=True)
        client.writer.transport.abort()  # a close would wait for the flood to flush
    growth = peak[0] - baseline
    assert growth < GROWTH_BOUND_BYTES, f"the node grew by {growth / MIB:.0f} MiB"
    assert held in done, "the node read the whole flood instead of holding the client back"
