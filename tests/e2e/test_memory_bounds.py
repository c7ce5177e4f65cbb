"""A node's memory stays bounded whatever a client does (docs/protocol.md §2.5, issue #11):
measured as the resident memory of a real ``tidings serve`` process (``/proc``) before
and during the abuse, on whichever server backend the suite runs with.

A client that sends commands without reading their replies is held back: once its
replies unsent pass the outbound bound, the node reads no further command of it until
they leave. An SSE stream whose client does not read its opening replay likewise
waits with at most the bound unsent. The node logs (DEBUG) each time it holds a client
back so: the tests await those lines, then measure.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Final
from urllib.parse import parse_qs, urlencode

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CONFIG, HTTP_TIMEOUT
from tests.support.raw_ws import RECEIVE_BUFFER_BYTES, StalledClient, stalled_client
from tests.support.rss import KIB, MIB, rss_bytes
from tests.support.server import ServerProcess, start_server
from tests.support.sse import sse_stream
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


async def _log_lines(server: ServerProcess, text: str, start: int, count: int = 1) -> None:
    """Return once ``count`` lines of the server's log after line ``start`` contain ``text``."""
    seen, found = start, 0
    while True:
        lines = server.log[seen:]
        found += sum(text in line for line in lines)
        if found >= count:
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
        held = asyncio.create_task(_log_lines(debug_node, HELD_LINE, log_start))
        try:
            await asyncio.wait(
                {flood, held}, timeout=ABUSE_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
            growth = max(peak[0], rss_bytes(pid)) - baseline
            assert growth < GROWTH_BOUND_BYTES, f"the node grew by {growth / MIB:.0f} MiB"
            # The kernel's buffers may take the whole flood before the node reads much of
            # it: then the node holds the client back while it works through them.
            async with asyncio.timeout(ABUSE_TIMEOUT_S):
                await held
            growth = max(peak[0], rss_bytes(pid)) - baseline
            assert growth < GROWTH_BOUND_BYTES, f"the node grew by {growth / MIB:.0f} MiB"
        finally:
            for task in (flood, held):
                task.cancel()
            await asyncio.gather(flood, held, return_exceptions=True)
            client.writer.transport.abort()  # a close would wait for the flood to flush


async def test_a_node_logging_at_debug_writes_no_line_per_frame(debug_node: ServerProcess) -> None:
    # A line per frame would let one client fill the log (and the node's time) with a
    # flood of small frames: uvicorn's websockets library logged each one at debug.
    frames = 50
    log_start = len(debug_node.log)
    async with stalled_client(debug_node.ws_url) as client:
        for n in range(frames):
            await client.request({"id": n, "op": "ping"})
    lines = debug_node.log[log_start:]
    frame_lines = [line for line in lines if '"op": "ping"' in line]
    assert frame_lines == [], f"{len(frame_lines)} lines for {frames} frames: {frame_lines[:2]}"


# -- an SSE stream's opening replay (issue #11.5) -------------------------------------

STREAMS: Final = 4
CHANNELS_PER_STREAM: Final = 32
HISTORY: Final = 100  # publications per channel, of about 10 KiB: ~32 MiB per stream
REPLAY_WAITS_LINE: Final = "replay waits for the client to read"


async def _channels_with_history(server: ServerProcess) -> str:
    """Fill the history of ``CHANNELS_PER_STREAM`` new channels; return the query of a
    stream replaying all of it."""
    channels = [f"room:replay-{uuid.uuid4().hex[:8]}-{n}" for n in range(CHANNELS_PER_STREAM)]
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30.0) as http:
        for n in range(HISTORY):
            answer = await http.post(
                "/api/broadcast",
                json={"channels": channels, "data": {"n": n, "blob": "x" * 10_000}},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            assert answer.status_code == 200, answer.text
        epochs = {result["channel"]: result["epoch"] for result in answer.json()["results"]}
    return urlencode(
        [("channel", channel) for channel in channels]
        + [("since", f"{epochs[channel]}:0") for channel in channels]
    )


async def _open_unread_stream(server: ServerProcess, query: str) -> asyncio.StreamWriter:
    """Open ``/sse?query`` with a small receive buffer; read until its ``subscribed``
    event began, then read nothing more."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=RECEIVE_BUFFER_BYTES)
    writer.write(f"GET /sse?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    seen = b""
    async with asyncio.timeout(ABUSE_TIMEOUT_S):
        while b"event: subscribed" not in seen:
            data = await reader.read(1024)
            assert data, f"the stream ended before its subscribed event: {seen!r}"
            seen += data
    assert seen.startswith(b"HTTP/1.1 200"), seen
    return writer


async def test_streams_that_do_not_read_their_opening_replay_keep_the_node_bounded(
    debug_node: ServerProcess,
) -> None:
    pid = debug_node.process.pid
    query = await _channels_with_history(debug_node)
    log_start = len(debug_node.log)
    baseline = rss_bytes(pid)
    writers = [await _open_unread_stream(debug_node, query) for _ in range(STREAMS)]
    try:
        growth = rss_bytes(pid) - baseline
        assert growth < GROWTH_BOUND_BYTES, f"the node grew by {growth / MIB:.0f} MiB"
        # Each stream waits for its client with at most the bound unsent.
        async with asyncio.timeout(ABUSE_TIMEOUT_S):
            await _log_lines(debug_node, REPLAY_WAITS_LINE, log_start, STREAMS)
        growth = rss_bytes(pid) - baseline
        assert growth < GROWTH_BOUND_BYTES, f"the node grew by {growth / MIB:.0f} MiB"
    finally:
        for writer in writers:
            writer.transport.abort()


async def test_a_replay_larger_than_the_bound_reaches_a_reading_client_whole_and_in_order(
    debug_node: ServerProcess,
) -> None:
    query = await _channels_with_history(debug_node)
    channels = parse_qs(query)["channel"]
    async with (
        httpx.AsyncClient(base_url=debug_node.http_url, timeout=HTTP_TIMEOUT) as http,
        sse_stream(http, parse_qs(query)) as stream,
    ):
        assert (await stream.next_event()).type == "subscribed"
        live = await http.post(
            "/api/publish",
            json={"channel": channels[0], "data": {"live": True}},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert live.status_code == 200, live.text
        received = await stream.publications(CHANNELS_PER_STREAM * HISTORY + 1)
    replayed, last = received[:-1], received[-1]
    for channel in channels:
        offsets = [pub["offset"] for pub in replayed if pub["channel"] == channel]
        assert offsets == list(range(1, HISTORY + 1)), channel
    assert (last["channel"], last["offset"], last["data"]) == (
        channels[0],
        HISTORY + 1,
        {"live": True},
    )
