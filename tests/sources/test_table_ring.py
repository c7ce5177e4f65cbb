"""A source on a node of a ring (docs/modes/hashing.md, "Sources"): the node reading the
table is not the owner of every channel it feeds, so each publication is sequenced by
its channel's owner, as a server API publish would be. Two real ``tidings serve`` nodes
of a static ring; the table source (SQLite) runs on node ``a`` only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.sources.conftest import AppDatabase
from tests.sources.test_table_nodes import wait_for
from tests.support.ring_nodes import RingPair, start_pair

pytestmark = pytest.mark.e2e

API_KEY: Final = "sources-ring-api-key"
SECRET: Final = "a-cluster-secret-of-at-least-32-bytes"
ROWS_PER_ROOM: Final = 20


@pytest.fixture
def ring_with_source(tmp_path: Path, sqlite_db: AppDatabase) -> Iterator[RingPair]:
    source = (
        f'[[sources]]\nname = "{sqlite_db.table}"\nkind = "table"\ndsn = "{sqlite_db.dsn}"\n'
        f'table = "{sqlite_db.table}"\nchannel = "room:{{room_id}}"\npoll_interval = "50ms"\n'
    )
    pair = start_pair(
        tmp_path,
        {"a": "ring", "b": "ring"},
        API_KEY,
        cluster_secret=SECRET,
        node_config={"a": source},
    )
    try:
        yield pair
    finally:
        pair.kill()


def local_history(pair: RingPair, node: str, channel: str) -> list[str]:
    """The bodies in ``channel``'s history on ``node``, which must own it (else the
    node would forward the call, and this would not tell where the history is)."""
    assert pair.ownership[node].owner(channel) == node
    answer = httpx.get(
        f"{pair.url(node)}/api/history",
        params={"channel": channel},
        headers={"authorization": f"Bearer {API_KEY}"},
        timeout=10,
    )
    answer.raise_for_status()
    return [p["data"]["body"] for p in answer.json()["publications"]]


def test_rows_for_a_channel_owned_by_another_node_are_published_on_that_owner(
    ring_with_source: RingPair, sqlite_db: AppDatabase
) -> None:
    pair = ring_with_source
    rooms = {
        owner: int(pair.channel("room:", a=owner, b=owner).removeprefix("room:"))
        for owner in ("a", "b")
    }
    expected = {owner: [f"{owner}-{n}" for n in range(ROWS_PER_ROOM)] for owner in rooms}
    for owner, room in rooms.items():
        sqlite_db.insert([(room, body) for body in expected[owner]])
    for owner, room in rooms.items():
        channel = f"room:{room}"

        def arrived(owner: str = owner, channel: str = channel) -> bool:
            return len(local_history(pair, owner, channel)) >= ROWS_PER_ROOM

        wait_for(arrived, f"{channel}'s rows on its owner {owner}")
        # Each row once, in the table's order, on the owner: node a sent b's on to b.
        assert local_history(pair, owner, channel) == expected[owner]
