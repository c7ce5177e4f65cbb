"""A power loss under a node on the sqlite broker, with a subscribing client.

The node is SIGKILLed mid-stream, then its files are left as a power loss would leave
them: what was fsynced survives, what was only written may not. With
``sqlite_durability = "full"`` (the default) the WAL is fsynced at every group commit,
before any publisher is answered, so it survives (only the ``-shm`` index, rebuilt at
open, goes). With ``"fast"`` it is fsynced only at checkpoints: the WAL is discarded,
and the node comes back with the channel as the last checkpoint left it (issue #12.2).
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from tests.chaos.conftest import API_KEY
from tests.chaos.tally import Ledger, Publisher, listen, print_summary, settle, tally
from tests.support.server import start_server
from tidings.brokers.sqlite import DB_FILE_NAME
from tidings.client import ApiClient

pytestmark = [pytest.mark.chaos, pytest.mark.e2e]

BEFORE_CHECKPOINT = 20
AFTER_CHECKPOINT = 20


def checkpoint(data: Path) -> None:
    """Copy the WAL into the main file now, as SQLite does every 1,000 pages."""
    with contextlib.closing(sqlite3.connect(data / DB_FILE_NAME)) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")


def lose_power(data: Path, *, durability: str) -> None:
    """Remove what a power loss would: the -shm always, the WAL unless it was fsynced."""
    (data / f"{DB_FILE_NAME}-shm").unlink(missing_ok=True)
    if durability == "fast":
        (data / f"{DB_FILE_NAME}-wal").unlink(missing_ok=True)


@pytest.mark.parametrize("durability", ["full", "fast"])
async def test_power_loss_under_a_sqlite_node_loses_nothing_silently(
    durability: str, tmp_path: Path, config_file: Path
) -> None:
    data = tmp_path / "data"
    env = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_SQLITE_DURABILITY": durability}
    channel = f"room:{secrets.token_hex(6)}"
    ledger = Ledger()
    node = start_server(config=config_file, data=data, env=env)
    try:
        async with AsyncExitStack() as stack:
            [listener] = [await listen(stack, node.http_url, channel)]
            api = await stack.enter_async_context(ApiClient(node.http_url, API_KEY))
            publisher = Publisher(api, channel, ledger)
            await publisher.publish(BEFORE_CHECKPOINT)
            checkpoint(data)
            await publisher.publish(AFTER_CHECKPOINT)
            node.kill()
            lose_power(data, durability=durability)
            node = start_server(config=config_file, data=data, env=env, port=node.port)
            await settle(publisher, [listener])
            counts = tally(ledger, listener)
    finally:
        node.kill()

    print_summary(f"sqlite power loss, durability {durability}", [counts])
    assert ledger.reissued() == 0
    assert counts.lost == 0
    assert counts.replaced == 0
    if durability == "full":
        # Every acknowledged publication was on disk: the client resumed with all of them.
        assert counts.delivered == len(ledger.acked)
        assert not listener.gaps
    else:
        # Those after the checkpoint are gone; the client was told (recovered: false).
        assert listener.gaps
        assert counts.delivered + counts.announced == len(ledger.acked)
