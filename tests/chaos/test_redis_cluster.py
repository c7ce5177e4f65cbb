"""Redis Cluster faults under load, under two real nodes and their subscribing clients.

Each test starts a cluster of its own: three masters, each with one replica (six
``redis-server`` processes). A master is killed mid-stream and its replica takes over
after being cut off (SIGSTOP, its link dropped) for the last publications, so it takes
over *without* them, as a lagging replica does; or a channel's slot is migrated to
another master while publications go on. Each acknowledged publication must reach each
client or be announced to it (``recovered: false``), and no position may be given twice
(issue #12.6). Whether the old code failed here depended on timing (the subscribed
nodes may rename the channel before the publisher's next publish lands);
tests/brokers/test_redis.py has the deterministic case.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from redis.crc import key_slot

from tests.chaos.conftest import API_KEY, nodes_on
from tests.chaos.tally import Ledger, Publisher, listen, print_summary, settle, tally
from tests.support.redis_cluster import LocalRedisCluster, start_cluster
from tests.support.server import ServerProcess
from tidings.brokers.redis_scripts import DEFAULT_PREFIX, ChannelKeys
from tidings.client import ApiClient
from tidings.core.channel import ChannelName

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

BEFORE_FAULT = 20
UNREPLICATED = 10
DURING_FAULT = 20


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalRedisCluster]:
    started = start_cluster(tmp_path / "cluster", replicas=1)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def nodes(cluster: LocalRedisCluster, config_file: Path) -> Iterator[list[ServerProcess]]:
    with nodes_on(cluster.url, 2, config_file) as started:
        yield started


def slot_of(channel: str) -> int:
    return key_slot(ChannelKeys.of(DEFAULT_PREFIX, ChannelName(channel)).head.encode())


@pytest.mark.parametrize("fault", ["failover", "slot migration"])
async def test_a_cluster_fault_under_load_loses_nothing_silently(
    fault: str, cluster: LocalRedisCluster, nodes: list[ServerProcess]
) -> None:
    channel = f"room:{secrets.token_hex(6)}"
    slot = slot_of(channel)
    ledger = Ledger()
    async with AsyncExitStack() as stack:
        listeners = [await listen(stack, node.http_url, channel) for node in nodes]
        api = await stack.enter_async_context(ApiClient(nodes[1].http_url, API_KEY))
        publisher = Publisher(api, channel, ledger)
        await publisher.publish(BEFORE_FAULT)
        if fault == "failover":
            replica = cluster.cut_off_replica_of(cluster.owner_of(slot))
            await publisher.publish(UNREPLICATED)  # acknowledged by the master alone
            publishing = asyncio.create_task(publisher.publish(DURING_FAULT))
            await asyncio.to_thread(cluster.kill_master_of, slot, replica)
        else:
            owner = cluster.owner_of(slot)
            masters = {cluster.owner_of(s) for s in (0, 8_000, 16_000)}
            target = next(port for port in masters if port != owner)
            publishing = asyncio.create_task(publisher.publish(DURING_FAULT))
            await asyncio.to_thread(cluster.move_slot, slot, target)
        await publishing
        await settle(publisher, listeners)
        counts = [tally(ledger, listener) for listener in listeners]

    print_summary(f"redis cluster {fault}", counts)
    assert ledger.reissued() == 0
    for found in counts:
        assert found.lost == 0, counts
        assert found.replaced == 0, counts
        assert found.delivered + found.announced == len(ledger.acked)
