"""Fixtures for the client's tests: real ``tidings serve`` processes that can be stopped
and started again on the same port (and data directory), and helpers that await events.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest

from tests.support.server import ServerProcess, free_port, start_server
from tidings.brokers.sqlite import SqliteBroker
from tidings.client import (
    ApiClient,
    Backoff,
    Event,
    Subscription,
    TransportChoice,
    TransportName,
)
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.server.config import load_settings

API_KEY: Final = "client-tests-api-key"
TRANSPORTS: Final[tuple[TransportName, ...]] = ("ws", "sse", "longpoll", "poll")
# A bound on how long an awaited event may take: a hang fails the test, never a pass.
EVENT_TIMEOUT_S: Final = 15.0
POLL_INTERVAL_S: Final = 0.05

CONFIG: Final = """
shutdown_timeout = "2s"

[namespaces.room]
history_size = 2000

[namespaces.small]
history_size = 5

[namespaces.tiny]
max_data_size = "1KiB"

[namespaces.secret]
policy = "token"
"""


def fast_backoff() -> Backoff:
    """Reconnection delays short enough for tests."""
    return Backoff(base_s=0.05, cap_s=0.5)


@dataclass
class Node:
    """A ``tidings serve`` on a fixed port that tests stop, kill and start again.

    Stopping and starting block on the process, so they run in a thread: the client
    under test keeps running (and reconnecting) on the event loop meanwhile.
    """

    config: Path
    data: Path | None = None
    port: int = field(default_factory=free_port)
    process: ServerProcess | None = None

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Start the server (again) on the same port and data directory."""
        self.process = await asyncio.to_thread(
            start_server,
            port=self.port,
            data=self.data,
            config=self.config,
            env={"TIDINGS_API_KEY": API_KEY},
        )

    async def stop(self, signum: int = signal.SIGTERM) -> None:
        """Stop with ``signum`` (SIGTERM: drain and goodbye; SIGKILL: nothing)."""
        process, self.process = self.process, None
        if process is not None:
            if signum == signal.SIGKILL:
                await asyncio.to_thread(process.kill)
            else:
                await asyncio.to_thread(process.stop, signum)

    def kill_now(self) -> None:
        """Kill whatever runs (fixture teardown)."""
        if self.process is not None:
            self.process.kill()
            self.process = None

    def api(self) -> ApiClient:
        """A server API client for this node (make a new one after a restart)."""
        return ApiClient(self.http_url, API_KEY)

    def subscribe(
        self,
        *channels: str,
        transport: TransportChoice = "auto",
        since: Mapping[ChannelName, Position] | Mapping[str, Position] | None = None,
    ) -> Subscription:
        """A subscription with test-friendly delays."""
        return Subscription(
            self.http_url,
            channels,
            transport=transport,
            since=since,
            poll_interval_s=POLL_INTERVAL_S,
            backoff=fast_backoff(),
        )


def write_config(directory: Path) -> Path:
    """Write the client tests' TOML configuration in ``directory``."""
    path = directory / "tidings.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The client tests' TOML configuration."""
    return write_config(tmp_path)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """A memory-broker server shared by a module's tests, which never stop it (and use
    channels of their own)."""
    server = Node(write_config(tmp_path_factory.mktemp("node")))
    server.process = start_server(
        port=server.port, config=server.config, env={"TIDINGS_API_KEY": API_KEY}
    )
    try:
        yield server
    finally:
        server.kill_now()


@pytest.fixture
async def fresh_node(config_file: Path) -> AsyncIterator[Node]:
    """A memory-broker server of the test's own, to stop and start again (history is
    lost on restart: a new epoch)."""
    server = Node(config_file)
    await server.start()
    try:
        yield server
    finally:
        server.kill_now()


@pytest.fixture
async def data_node(config_file: Path, tmp_path: Path) -> AsyncIterator[Node]:
    """A running sqlite-broker server (``--data``: history survives restarts)."""
    server = Node(config_file, data=tmp_path / "data")
    await server.start()
    try:
        yield server
    finally:
        server.kill_now()


@pytest.fixture
def idle_node(config_file: Path) -> Iterator[Node]:
    """A server that is not started yet (its port is chosen)."""
    server = Node(config_file)
    try:
        yield server
    finally:
        server.kill_now()


@pytest.fixture
async def api(node: Node) -> AsyncIterator[ApiClient]:
    """The server API of ``node``."""
    async with node.api() as client:
        yield client


async def start_of(api: ApiClient, channel: str) -> dict[str, Position]:
    """``since`` for ``channel`` from its current head, so a subscription gets every
    publication made from now on however late it connects (no readiness to wait for)."""
    return {channel: (await api.history(channel)).position}


async def publish_numbers(api: ApiClient, channel: str, numbers: range) -> list[int]:
    """Publish ``{"n": n}`` for each number, in order; return the offsets."""
    return [(await api.publish(channel, {"n": n})).offset for n in numbers]


async def publish_offline(node: Node, channel: str, numbers: range) -> None:
    """Publish into a stopped node's data directory, as if during its outage."""
    assert node.process is None
    assert node.data is not None
    namespaces = load_settings(node.config).namespace_table()
    broker = SqliteBroker(node.data, namespaces)
    await broker.start(lambda _publication: None)
    try:
        for n in numbers:
            await broker.publish(ChannelName(channel), json.dumps({"n": n}).encode())
    finally:
        await broker.close()


async def take(subscription: Subscription, count: int) -> list[Event]:
    """Return the next ``count`` events of ``subscription``."""
    events: list[Event] = []
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        while len(events) < count:
            events.append(await anext(subscription))
    return events


async def take_publications(subscription: Subscription, count: int) -> list[Publication]:
    """Return the next ``count`` events, which must all be publications."""
    events = await take(subscription, count)
    assert all(isinstance(event, Publication) for event in events), events
    return [event for event in events if isinstance(event, Publication)]


def numbers(publications: list[Publication]) -> list[int]:
    """The ``n`` of each publication's data."""
    return [json.loads(publication.data)["n"] for publication in publications]
