"""Redis coming back older than it was, under two real nodes and their subscribing clients.

Redis is a server of the test's own (free port, its own directory). It saves an RDB,
takes more publications, is killed and restarted from that RDB: the publications after
the snapshot are gone from it, and its heads are older than the positions the nodes
and clients hold. Each acknowledged publication must reach each client or be announced
to it (``recovered: false``), and no position may be given twice (issue #12.1).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.chaos.conftest import API_KEY, nodes_on
from tests.chaos.tally import Ledger, Publisher, listen, print_summary, settle, tally
from tests.support.redis_cluster import RedisServer
from tests.support.server import ServerProcess
from tidings.client import ApiClient

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

BEFORE_SNAPSHOT = 20
AFTER_SNAPSHOT = 20
AFTER_RESTART = 20


@pytest.fixture
def nodes(redis: RedisServer, config_file: Path) -> Iterator[list[ServerProcess]]:
    with nodes_on(redis.url, 2, config_file) as started:
        yield started


async def test_redis_restored_from_an_older_rdb_loses_nothing_silently(
    redis: RedisServer, nodes: list[ServerProcess]
) -> None:
    channel = f"room:{secrets.token_hex(6)}"
    ledger = Ledger()
    async with AsyncExitStack() as stack:
        listeners = [await listen(stack, node.http_url, channel) for node in nodes]
        api = await stack.enter_async_context(ApiClient(nodes[1].http_url, API_KEY))
        publisher = Publisher(api, channel, ledger)
        await publisher.publish(BEFORE_SNAPSHOT)
        redis.cli("SAVE")
        await publisher.publish(AFTER_SNAPSHOT)
        redis.stop()
        redis.start()  # from the RDB: the last AFTER_SNAPSHOT publications are gone
        await publisher.publish(AFTER_RESTART)
        await settle(publisher, listeners)
        counts = [tally(ledger, listener) for listener in listeners]

    assert ledger.reissued() == 0
    for found in counts:
        assert found.lost == 0, counts
        assert found.replaced == 0, counts
        assert found.delivered + found.announced == len(ledger.acked)
    # The clients were told: the channel moved to a new epoch under them.
    assert all(listener.gaps for listener in listeners), counts
    print_summary("redis restored from an RDB", counts)
