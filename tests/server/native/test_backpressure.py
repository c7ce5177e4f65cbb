"""The native server and a client that does not read (docs/protocol.md §2.5, §7; issue #11
item 2, issue #12 item 5): pings flooded meanwhile are answered by one pong, and a slow
consumer cut off hears why (the ``disconnect`` push and the 4500 close) right after
what the kernel already holds, not behind the megabyte it fell behind by."""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Final

import httpx
import pytest

from tests.server.native.conftest import Served, serving
from tests.support.api import ApiClient
from tests.support.raw_http import API_KEY, TIMEOUT_S, RawConnection, command, open_websocket
from tests.support.wsframes import client_frame
from tidings.server.native.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from tidings.server.native.http import HttpConnection
from tidings.server.native.websocket import State
from tidings.transports.close_codes import CLOSE_SLOW_CONSUMER

RECEIVE_BUFFER_BYTES: Final = 64 * 1024
# A send that makes no progress for this long: the server has stopped reading.
STALL_S: Final = 2.0
# What the transport may still hold once the client was cut: its high-water mark and
# the goodbye (uvloop's and asyncio's default high-water mark is 64 KiB).
HELD_AFTER_CUT_BYTES: Final = 128 * 1024


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """A server whose liveness pings do not come during a test: a client that does not
    read is dropped after two unanswered rounds."""
    async with serving(ping_interval_s=600.0) as server:
        yield server


@pytest.fixture
async def api(served: Served) -> AsyncIterator[ApiClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
        yield ApiClient(http, API_KEY)


def server_side(served: Served) -> HttpConnection:
    [conn] = [c for c in served.server.connections if c._websocket is not None]
    return conn


async def send_pings_until_stalled(conn: RawConnection) -> list[bytes]:
    """Send numbered pings until the server stops reading; return their payloads."""
    payloads: list[bytes] = []
    while len(payloads) < 1_000_000:
        # The largest control payload: the kernel's buffers fill after fewer pongs.
        batch = [b"%0125d" % n for n in range(len(payloads), len(payloads) + 1000)]
        conn.writer.write(b"".join(client_frame(OP_PING, payload) for payload in batch))
        payloads.extend(batch)
        try:
            await asyncio.wait_for(conn.writer.drain(), STALL_S)
        except TimeoutError:
            return payloads
    raise AssertionError("the server read a million pings without our reading a pong")


async def test_pings_flooded_by_a_client_that_does_not_read_are_answered_by_one_pong(
    served: Served,
) -> None:
    conn = await open_websocket(served.port, receive_buffer=RECEIVE_BUFFER_BYTES)
    pings = await send_pings_until_stalled(conn)
    conn.writer.write(client_frame(OP_TEXT, command("ping", 1)))  # marks the end; not drained
    pongs: list[bytes] = []
    while True:
        opcode, _, payload = await conn.frame()
        if opcode == OP_PONG:
            pongs.append(payload)
        elif opcode == OP_TEXT and json.loads(payload).get("id") == 1:
            break
    assert pongs[-1] == pings[-1]  # the latest ping is answered
    assert len(pongs) < len(pings)  # those read while writing was paused: one pong
    conn.close()


async def test_a_slow_consumer_cut_off_hears_the_disconnect_push_and_the_4500_close(
    served: Served, api: ApiClient
) -> None:
    channel = "room:slow"
    conn = await open_websocket(served.port, receive_buffer=RECEIVE_BUFFER_BYTES)
    await conn.send(client_frame(OP_TEXT, command("subscribe", 1, channel=channel)))
    await api.wait_for_subscribers(channel, 1)
    server_conn = server_side(served)
    # The client reads nothing from here on; publish until the server cuts it.
    data = "x" * 16_384
    websocket = server_conn._websocket
    assert websocket is not None
    async with asyncio.timeout(TIMEOUT_S):
        while websocket.state is State.OPEN:  # CLOSING once cut: the close frame is queued
            await api.publish(channel, data)
    # What it had not been sent yet was dropped: the goodbye is next in line.
    assert server_conn.transport is not None
    assert server_conn.transport.get_write_buffer_size() < HELD_AFTER_CUT_BYTES
    texts: list[dict[str, object]] = []
    while True:
        opcode, _, payload = await conn.frame()
        if opcode == OP_TEXT:
            texts.append(json.loads(payload))
        elif opcode == OP_CLOSE:
            break
    assert struct.unpack("!H", payload[:2])[0] == CLOSE_SLOW_CONSUMER
    goodbye = texts[-1]
    assert (goodbye["push"], goodbye["code"], goodbye["reconnect"]) == (
        "disconnect",
        CLOSE_SLOW_CONSUMER,
        True,
    )
    conn.close()
