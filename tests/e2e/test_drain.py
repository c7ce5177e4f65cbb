"""A drain without a stampede (issue #12.4): a node holding 1,000 WebSocket clients that is
sent SIGTERM spreads its disconnects over the drain window and gives each client a
``delay`` (docs/protocol.md §3, 1.1) so that the reconnects it asks for never run ahead of
``drain_rate`` per second.

The clients are light: sans-I/O ``websockets`` protocols over asyncio streams, all in
this process. Each records when its ``disconnect`` arrived and the delay it was given;
its scheduled reconnect is the arrival plus the delay. What is asserted are lower
bounds, which a loaded machine can only make later, never earlier: the i-th disconnect
to arrive came no sooner after the signal than its place in the spread allows, and the
i-th scheduled reconnect no sooner than ``i / drain_rate`` seconds after the signal
(the server's schedule holds, whatever the lateness of either process).
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from tests.e2e.conftest import serving
from tests.support.server import STOP_TIMEOUT_S, ServerProcess

pytestmark = pytest.mark.e2e

CLIENTS: Final = 1_000
DRAIN_WINDOW_S: Final = 2.0
DRAIN_RATE: Final = 200  # reconnects per second
CONNECT_BATCH: Final = 50
# Rounding to whole milliseconds, and the float arithmetic of the comparison.
SLACK_S: Final = 0.002
DRAIN_TIMEOUT_S: Final = 60.0


@dataclass
class LightClient:
    """One WebSocket connection that answers pings and the close, and notes its goodbye."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    protocol: ClientProtocol
    registered: asyncio.Event = field(default_factory=asyncio.Event)
    goodbye: dict[str, Any] | None = None
    arrived_s: float = 0.0
    close_code: int | None = None

    async def run(self) -> None:
        """Read until the server closes; the first reply (to ``ping``) means registered."""
        protocol = self.protocol
        while True:
            data = await self.reader.read(65_536)
            now = time.monotonic()
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if not isinstance(event, WireFrame) or event.opcode is not Opcode.TEXT:
                    continue
                frame = json.loads(bytes(event.data))
                if frame.get("id") == 1:
                    self.registered.set()
                elif frame.get("push") == "disconnect" and self.goodbye is None:
                    self.goodbye, self.arrived_s = frame, now
            self._flush()
            if protocol.close_rcvd is not None or not data:
                self.close_code = None if protocol.close_rcvd is None else protocol.close_rcvd.code
                return

    def _flush(self) -> None:
        pending = self.protocol.data_to_send()
        if pending and not self.writer.is_closing():
            self.writer.write(b"".join(pending))


async def connect(url: str) -> LightClient:
    uri = parse_uri(url)
    reader, writer = await asyncio.open_connection(uri.host, uri.port)
    protocol = ClientProtocol(uri, max_size=None)
    client = LightClient(reader, writer, protocol)
    protocol.send_request(protocol.connect())
    client._flush()
    while protocol.state is State.CONNECTING:
        data = await reader.read(65_536)
        if not data:
            raise ConnectionError("the server closed during the handshake")
        protocol.receive_data(data)
    if protocol.handshake_exc is not None:
        raise protocol.handshake_exc
    protocol.send_text(json.dumps({"op": "ping", "id": 1}).encode())
    client._flush()
    return client


async def drain_of(server: ServerProcess) -> tuple[float, list[LightClient]]:
    """Connect ``CLIENTS`` clients, SIGTERM the node; return the signal's time and them."""
    clients: list[LightClient] = []
    for start in range(0, CLIENTS, CONNECT_BATCH):
        batch = min(CONNECT_BATCH, CLIENTS - start)
        clients += await asyncio.gather(*(connect(server.ws_url) for _ in range(batch)))
    readers = [asyncio.create_task(client.run()) for client in clients]
    try:
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            await asyncio.gather(*(client.registered.wait() for client in clients))
            signalled_s = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            await asyncio.gather(*readers)
    finally:
        for client in clients:
            client.writer.close()
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    return signalled_s, clients


async def test_a_drain_spreads_disconnects_and_reconnects_under_the_rate(
    config_file: Path,
) -> None:
    env = {
        "TIDINGS_DRAIN_WINDOW": f"{DRAIN_WINDOW_S}s",
        "TIDINGS_DRAIN_RATE": str(DRAIN_RATE),
        "TIDINGS_SHUTDOWN_TIMEOUT": "20s",
    }
    with serving(config_file, env) as server:
        signalled_s, clients = await drain_of(server)
        exit_code = await asyncio.to_thread(server.process.wait, STOP_TIMEOUT_S)

    goodbyes = [client.goodbye for client in clients]
    assert [g for g in goodbyes if g is None] == []
    assert {(g["code"], g["reconnect"]) for g in goodbyes if g} == {(1001, True)}
    delays_ms = [g["delay"] for g in goodbyes if g]
    assert all(isinstance(delay, int) and delay >= 0 for delay in delays_ms)
    assert {client.close_code for client in clients} == {1001}
    assert exit_code in (0, -signal.SIGTERM)

    # The disconnects are spread: the i-th to arrive came no sooner than its place
    # (one every min(window / clients, 1 / rate) seconds) after the signal.
    spacing_s = min(DRAIN_WINDOW_S / CLIENTS, 1 / DRAIN_RATE)
    arrivals = sorted(client.arrived_s - signalled_s for client in clients)
    early = [(i, at) for i, at in enumerate(arrivals) if at < i * spacing_s - SLACK_S]
    assert early == []

    # The reconnects asked for never run ahead of the rate: by t seconds after the
    # signal, at most t * rate + 1 clients were told they may be back.
    reconnects = sorted(
        c.arrived_s + c.goodbye["delay"] / 1000 - signalled_s for c in clients if c.goodbye
    )
    ahead = [(i, at) for i, at in enumerate(reconnects) if at < i / DRAIN_RATE - SLACK_S]
    assert ahead == []
    print(  # the figures for docs/server.md: the busiest second, as the clients saw it
        f"disconnects over {arrivals[-1] - arrivals[0]:.2f} s; reconnects over "
        f"{reconnects[-1] - reconnects[0]:.2f} s; busiest second: "
        f"{max(_in_a_second(reconnects, i) for i in range(len(reconnects)))} reconnects"
    )


def _in_a_second(times: list[float], start: int) -> int:
    end = start
    while end < len(times) and times[end] < times[start] + 1.0:
        end += 1
    return end - start
