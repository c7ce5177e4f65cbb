"""The NATS broker on a cluster of three ``nats-server`` (JetStream, the stream replicated
on all three) that the test starts itself on free ports: the server leading the
history stream is killed while two nodes publish, and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import nats
import pytest

from tests.support.handler import RecordingHandler
from tests.support.nats_server import NatsServer, start_cluster
from tidings.brokers.nats import NatsBroker
from tidings.brokers.nats_subjects import stream_name
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Position
from tidings.core.recovery import Replay
from tidings.errors import BrokerError

PUBLISHERS_PER_NODE: Final = 2
PUBLICATIONS_PER_PUBLISHER: Final = 40
KILL_AFTER: Final = 30  # acknowledged publications before the leader is killed
LIMIT_S: Final = 40.0
NAMESPACES: Final = Namespaces(
    {NamespaceName("room"): NamespaceOptions(history=HistoryOptions(1_000, 3_600_000))}
)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    servers = start_cluster(tmp_path / "nats")
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


async def stream_leader(url: str) -> str:
    client = await nats.connect(url)
    try:
        reply = await client.request(
            f"$JS.API.STREAM.INFO.{stream_name('tidings')}", b"", timeout=5
        )
    finally:
        await client.close()
    leader: str = json.loads(reply.data)["cluster"]["leader"]
    return leader


async def publish_until_acknowledged(
    broker: NatsBroker, channel: ChannelName, data: bytes, key: str
) -> Position:
    """Publish as an application does: on an error, again with the same key."""
    while True:
        try:
            return (await broker.publish(channel, data, key=key)).position
        except BrokerError:  # the cluster is electing a leader: refused or unanswered
            await asyncio.sleep(0.05)


async def test_killing_the_stream_leader_mid_stream_loses_nothing_acknowledged(
    cluster: list[NatsServer],
) -> None:
    channel = ChannelName(f"room:{secrets.token_hex(6)}")
    hosts = ",".join(f"127.0.0.1:{server.port}" for server in cluster)
    url = f"nats://{hosts}?replicas=3"
    heard = RecordingHandler()
    nodes = [NatsBroker(url, NAMESPACES, ping_interval_s=0.3) for _ in range(2)]
    await nodes[0].start(heard)
    await nodes[1].start(RecordingHandler())
    acknowledged: dict[Position, bytes] = {}
    enough = asyncio.Event()

    async def publisher(broker: NatsBroker, name: str) -> None:
        for n in range(PUBLICATIONS_PER_PUBLISHER):
            data = b'{"p":"%s","n":%d}' % (name.encode(), n)
            position = await publish_until_acknowledged(broker, channel, data, f"{name}-{n}")
            assert position not in acknowledged, (name, n, position, acknowledged)
            acknowledged[position] = data
            if len(acknowledged) >= KILL_AFTER:
                enough.set()

    try:
        async with asyncio.timeout(LIMIT_S):
            await nodes[0].subscribe(channel)
            await nodes[0].publish(channel, b'{"first":true}', key="first")
            leader = await stream_leader(cluster[0].url)
            tasks = [
                asyncio.create_task(publisher(node, f"{i}.{j}"))
                for i, node in enumerate(nodes)
                for j in range(PUBLISHERS_PER_NODE)
            ]
            await enough.wait()
            await asyncio.to_thread(next(s for s in cluster if s.name == leader).kill)
            await asyncio.gather(*tasks)
            total = 1 + len(nodes) * PUBLISHERS_PER_NODE * PUBLICATIONS_PER_PUBLISHER
            seen = await heard.wait_for(total)
            read = await nodes[1].history(channel)
    finally:
        for node in nodes:
            await node.close()

    assert isinstance(read.recovery, Replay)
    stored = {p.position: p.data for p in read.recovery.publications}
    epoch = read.head.epoch
    assert [p.offset for p in read.recovery.publications] == list(range(1, total + 1))
    assert all(stored.get(position) == data for position, data in acknowledged.items())
    assert len(acknowledged) == total - 1  # each acknowledged once, at its own position
    assert [p.position for p in seen] == [Position(epoch, n) for n in range(1, total + 1)]
    assert len(heard.publications) == total
