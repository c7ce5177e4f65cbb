"""deploy/haproxy.cfg in front of three ``tidings serve`` nodes on the machine's Redis:
least connections with the agent check spreads WebSocket clients evenly, a draining node
is sent none of the clients it moves away, and a restarted node takes the new ones
until the three are even again.

Real processes and sockets: Debian's ``haproxy`` (run with the shipped configuration,
its ports and check intervals substituted), three nodes on a Redis prefix of this test's
own, and raw ``websockets`` clients through HAProxy. Each client's ``connect`` reply
names the node it reached (its client id starts with the node id).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.server import ServerProcess, free_port, start_server
from tests.support.services import REDIS_HOST, REDIS_PORT, require_binary, require_service

pytestmark = pytest.mark.e2e

CONFIG: Final = Path(__file__).resolve().parents[2] / "deploy" / "haproxy.cfg"
NODE_NAMES: Final = ("node1", "node2", "node3")
CLIENTS: Final = 1500
CONCURRENCY: Final = 100  # handshakes in flight at once
SPREAD: Final = 0.10  # each node within ±10% of an even share
DEADLINE_S: Final = 60.0


@dataclass
class Node:
    name: str
    port: int
    agent_port: int
    process: ServerProcess | None = None

    def start(self, broker: str) -> None:
        self.process = start_server(
            port=self.port,
            env={"TIDINGS_AGENT_PORT": str(self.agent_port), "TIDINGS_NODE_ID": self.name},
            extra=["--broker", broker],
        )


def haproxy_config(lb_port: int, nodes: list[Node], stats_socket: Path) -> str:
    """The shipped configuration with this test's ports, socket and faster checks."""
    text = CONFIG.read_text()
    replacements = {
        "127.0.0.1:8000": f"127.0.0.1:{lb_port}",
        "/run/haproxy/tidings.sock": str(stats_socket),
        "inter 2s": "inter 100ms",  # and agent-inter
    }
    for number, node in enumerate(nodes, start=1):
        replacements[f"127.0.0.1:800{number}"] = f"127.0.0.1:{node.port}"
        replacements[f"agent-port 900{number}"] = f"agent-port {node.agent_port}"
    for old, new in replacements.items():
        assert old in text, f"deploy/haproxy.cfg no longer holds {old!r}"
        text = text.replace(old, new)
    return text


@contextmanager
def haproxy(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    binary = require_binary("haproxy")
    with log.open("wb") as out:
        process = subprocess.Popen([binary, "-db", "-f", str(config)], stderr=out, stdout=out)
    try:
        yield process
    finally:
        process.kill()
        process.wait(10)


async def server_states(stats_socket: Path) -> dict[str, str]:
    """HAProxy's state of each server (UP, DOWN, DRAIN...) from ``show stat``."""
    reader, writer = await asyncio.open_unix_connection(str(stats_socket))
    writer.write(b"show stat\n")
    text = (await reader.read()).decode()
    writer.close()
    await writer.wait_closed()
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    return {row["svname"]: row["status"] for row in rows if row["svname"] in NODE_NAMES}


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``condition`` until it holds, or fail after ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.05)


class Clients:
    """WebSocket clients through HAProxy, and the node each reached."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.connections: dict[ClientConnection, str] = {}
        self._gate = asyncio.Semaphore(CONCURRENCY)

    async def open_one(self) -> tuple[ClientConnection, str]:
        async with self._gate:
            connection = await connect(self.url, ping_interval=None, open_timeout=20)
            await connection.send(json.dumps({"op": "connect", "id": 1}))
            reply = json.loads(await asyncio.wait_for(connection.recv(), 20))
        node = reply["result"]["client"].split(".")[0]
        self.connections[connection] = node
        return connection, node

    async def open(self, count: int) -> Counter[str]:
        opened = await asyncio.gather(*(self.open_one() for _ in range(count)))
        return Counter(node for _, node in opened)

    async def follow_away(self, connection: ClientConnection) -> str:
        """Read until the node closes ``connection`` (after its ``disconnect``),
        reconnect as told, and return the node reached."""
        delay_s = 0.0
        try:
            while True:
                frame = json.loads(await connection.recv())
                if frame.get("push") == "disconnect":
                    delay_s = frame.get("delay", 0) / 1000
        except ConnectionClosed:
            pass
        del self.connections[connection]
        await asyncio.sleep(delay_s)  # the node's reconnect schedule (docs/protocol.md §3)
        return (await self.open_one())[1]

    def on(self, node: str) -> list[ClientConnection]:
        return [c for c, where in self.connections.items() if where == node]

    async def close(self) -> None:
        for connection in self.connections:
            connection.transport.abort()  # the nodes are gone: no closing handshake
        await asyncio.gather(*(c.wait_closed() for c in self.connections))


@asynccontextmanager
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[list[Node], Path, str]]:
    require_service(REDIS_HOST, REDIS_PORT, "Redis")
    # A prefix of its own on the shared Redis: nothing to flush, nothing shared.
    broker = f"redis://{REDIS_HOST}:{REDIS_PORT}/0?prefix=tidings-lb-{secrets.token_hex(4)}"
    nodes = [Node(name, free_port(), free_port()) for name in NODE_NAMES]
    lb_port = free_port()
    stats_socket = tmp_path / "haproxy.sock"
    config = tmp_path / "haproxy.cfg"
    config.write_text(haproxy_config(lb_port, nodes, stats_socket))
    try:
        for node in nodes:
            node.start(broker)
        with haproxy(config, tmp_path / "haproxy.log"):
            await until(lambda: _all_up(stats_socket), "HAProxy sees the three nodes up")
            yield nodes, stats_socket, f"ws://127.0.0.1:{lb_port}/ws"
    finally:
        for node in nodes:
            if node.process is not None:
                node.process.kill()


async def _all_up(stats_socket: Path) -> bool:
    try:
        states = await server_states(stats_socket)
    except (FileNotFoundError, ConnectionRefusedError):
        return False  # HAProxy is still starting
    return len(states) == 3 and all(state == "UP" for state in states.values())


async def loads(nodes: list[Node]) -> dict[str, int]:
    async with httpx.AsyncClient() as http:
        answers = {}
        for node in nodes:
            assert node.process is not None
            response = await http.get(f"{node.process.http_url}/load")
            answers[node.name] = response.json()["connections"]
        return answers


def assert_even(counts: dict[str, int], total: int) -> None:
    share = total / len(NODE_NAMES)
    for name in NODE_NAMES:
        assert abs(counts.get(name, 0) - share) <= SPREAD * share, (counts, share)


async def test_haproxy_least_connections_spreads_drains_and_refills(tmp_path: Path) -> None:
    async with cluster(tmp_path) as (nodes, stats_socket, url):
        clients = Clients(url)
        try:
            first = await clients.open(CLIENTS)
            assert_even(dict(first), CLIENTS)
            assert_even(await loads(nodes), CLIENTS)  # the nodes count what HAProxy sent

            # Restart node3: it says "drain" to the agent, then moves its clients; every
            # one of them reconnects to node1 or node2.
            restarted = nodes[2]
            assert restarted.process is not None
            moving = clients.on(restarted.name)
            stopping = asyncio.create_task(asyncio.to_thread(restarted.process.stop))
            landed = Counter(await asyncio.gather(*(clients.follow_away(c) for c in moving)))
            assert await stopping == 0
            assert landed[restarted.name] == 0, landed
            assert sum(landed.values()) == len(moving)

            await asyncio.to_thread(restarted.start, _broker_of(restarted))
            await until(lambda: _all_up(stats_socket), "HAProxy sees node3 up and ready")
            # The new connections go to node3 until the three are even again.
            added = CLIENTS // 2
            fresh = await clients.open(added)
            assert fresh[restarted.name] >= (1 - SPREAD) * added, fresh
            counts = await loads(nodes)
            assert_even(counts, CLIENTS + added)
        finally:
            await clients.close()


def _broker_of(node: Node) -> str:
    assert node.process is not None
    command = node.process.process.args
    assert isinstance(command, list)
    return str(command[command.index("--broker") + 1])
