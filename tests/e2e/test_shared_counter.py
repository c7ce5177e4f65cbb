"""The shared-counter example (examples/shared_counter.py) run for real: nodes ``a`` and
``b`` of one ring in a real etcd, each a process of the example (tidings embedded in
Starlette, under uvicorn), sharing its SQLite store. A counter owned by ``a`` is
changed through ``b`` (redirected to ``a``), and a subscriber sees each value. Node
``c`` joins and the ring gives it the counter: ``a`` saves it (``lost``), the subscriber
is moved to ``c`` (told of a gap while history does not move with the key; not with the
hand-over), the value read through ``b`` is the saved one, loaded on ``c``
(``gained``), and the next change goes on from it. Then ``c`` is stopped: it saves
the counter before leaving the ring, and ``a`` takes it back from there.

Without the ring transition (the hand-over) a new ring applies at once on every node:
a change reaching ``c`` before ``a`` saved would start from the older saved value. The
node moves its subscribers only once ``lost`` returned (``server.key_ownership``), and
the test makes its next change once ``c`` serves the subscriber and the key."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.client.conftest import fast_backoff, take
from tests.support.etcd import etcd_server
from tests.support.server import ServerProcess, free_port
from tidings.client import GapNotice, Subscription
from tidings.core.publication import Publication
from tidings.core.ring import HashRing

REPOSITORY: Final = Path(__file__).resolve().parents[2]
WAIT_S: Final = 15.0
AB: Final = HashRing(["a", "b"])
ABC: Final = HashRing(["a", "b", "c"])
# A counter a owns in ring {a, b} and c in ring {a, b, c}.
NAME: Final = next(
    name
    for name in (f"hits-{n}" for n in range(10_000))
    if AB.owner(f"counter:{name}") == "a" and ABC.owner(f"counter:{name}") == "c"
)
KEY: Final = f"counter:{NAME}"


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        yield url


def start_node(etcd_url: str, node: str, store: Path) -> ServerProcess:
    """Start one node of the example; return it once it listens."""
    port = free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(
        {
            "TIDINGS_NODE_ID": node,
            "TIDINGS_RING_ETCD": etcd_url,
            "TIDINGS_RING_PREFIX": "/test/shared-counter",
            "TIDINGS_RING_TTL": "2s",
            "TIDINGS_RING_MOVE_RATE": "50",
            "TIDINGS_SHUTDOWN_TIMEOUT": "2s",
            "TIDINGS_PUBLIC_URL": f"http://127.0.0.1:{port}/realtime",
            "COUNTER_DB": str(store),
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "examples.shared_counter", "--port", str(port)],
        cwd=REPOSITORY,
        env=environment,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    server = ServerProcess(port, process)
    server.wait_ready()
    return server


def saved(store: Path) -> int | None:
    with sqlite3.connect(store) as db:
        row = db.execute("SELECT value FROM counters WHERE key = ?", (KEY,)).fetchone()
    return None if row is None else int(row[0])


async def until(condition: Any, what: str) -> None:
    """Wait (bounded) until ``condition()`` holds."""
    async with asyncio.timeout(WAIT_S):
        while not await asyncio.to_thread(condition):  # noqa: ASYNC110  (another process's state)
            await asyncio.sleep(0.05)
    assert condition(), what


async def add(client: httpx.AsyncClient, server: ServerProcess) -> dict[str, Any]:
    response = await client.post(f"{server.http_url}/counters/{NAME}", params={"by": 1})
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def owner(server: ServerProcess) -> str:
    """The owner of the counter's key, as ``server`` routes it."""
    response = httpx.get(f"{server.http_url}/realtime/route", params={"key": KEY})
    url: str = response.json()["url"]
    return url


def subscribers(server: ServerProcess) -> int:
    """How many subscribers of the counter's channel ``server`` holds."""
    response = httpx.get(f"{server.http_url}/realtime/api/channels", params={"prefix": KEY})
    channels: dict[str, dict[str, int]] = response.json()["channels"]
    return channels.get(KEY, {}).get("subscribers", 0)


async def take_until_publication(watcher: Subscription) -> list[Any]:
    """The watcher's next events, up to and with its next publication."""
    events: list[Any] = []
    while not events or not isinstance(events[-1], Publication):
        events.extend(await take(watcher, 1))
    return events


def values(events: list[Any]) -> list[int]:
    return [json.loads(e.data)["value"] for e in events if isinstance(e, Publication)]


async def test_a_counter_goes_on_from_its_saved_value_on_each_new_owner(
    etcd_url: str, tmp_path: Path
) -> None:
    store = tmp_path / "counters.sqlite3"
    a = await asyncio.to_thread(start_node, etcd_url, "a", store)
    b = c = None
    try:
        b = await asyncio.to_thread(start_node, etcd_url, "b", store)
        async with httpx.AsyncClient(follow_redirects=True, timeout=WAIT_S) as client:
            async with Subscription(
                f"{a.http_url}/realtime", [KEY], transport="ws", backoff=fast_backoff()
            ) as watcher:
                # Entered, the client may still be subscribing: it starts from then.
                await until(lambda: KEY in watcher.positions, "the subscriber is on a")
                before = [await add(client, b) for _ in range(3)]
                seen_before = values(await take(watcher, 3))
                assert saved(store) is None  # the state lives on its owner, in memory

                c = await asyncio.to_thread(start_node, etcd_url, "c", store)
                c_url = f"{c.http_url}/realtime"
                await until(lambda: saved(store) == 3, "a saved the counter it gave to c")
                await until(lambda: subscribers(c) == 1, "the subscriber moved to c")
                for node in (b, c):
                    await until(lambda n=node: owner(n) == c_url, "the ring gives c the key")
                current = (await client.get(f"{b.http_url}/counters/{NAME}")).json()
                after = await add(client, b)
                moved = await take_until_publication(watcher)

            await asyncio.to_thread(c.stop)  # drains: saves its counters, then leaves
            assert saved(store) == 4
            for node in (a, b):
                await until(lambda n=node: owner(n) == f"{a.http_url}/realtime", "c left")
            back = await add(client, b)
    finally:
        for server in (a, b, c):
            if server is not None:
                server.kill()
    # Without the hand-over of history, the moved subscriber was told of a gap first.
    assert all(isinstance(event, GapNotice) for event in moved[:-1])
    assert len(moved) <= 2
    assert (current["value"], current["node"]) == (3, "c")  # loaded from a's save
    assert [(x["value"], x["node"]) for x in before] == [(1, "a"), (2, "a"), (3, "a")]
    assert seen_before == [1, 2, 3]
    assert (after["value"], after["node"]) == (4, "c")
    assert values(moved) == [4]
    assert (back["value"], back["node"]) == (5, "a")
    assert any(f"gained {KEY} = 3 (loaded)" in line for line in c.log)
    assert any(f"lost {KEY} = 4 (saved)" in line for line in c.log)
    assert any(f"gained {KEY} = 4 (loaded)" in line for line in a.log)
