"""The JavaScript client follows owner routing (docs/protocol.md §9) between real nodes:
two ``tidings serve`` processes of one static ring, the client (in Node, over each
transport) given the node that does not serve its channel, resuming on the owner from
the position it was given. Needs node (>= 20), not a browser."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.ring_nodes import RingPair, start_pair
from tests.support.services import missing, require_binary

SCRIPT: Final = Path(__file__).with_name("owner_routing.mjs")
API_KEY: Final = "js-owner-routing-api-key"
LINE_TIMEOUT_S: Final = 15.0


def websocket_flags(node: str) -> list[str] | None:
    """The node options that give this node a global WebSocket (none from Node 22 on,
    ``--experimental-websocket`` in Node 20 and 21); ``None`` if it has none."""
    probe = "process.exit(typeof WebSocket === 'function' ? 0 : 1)"
    for flags in ([], ["--experimental-websocket"]):
        completed = subprocess.run(
            [node, *flags, "-e", probe], capture_output=True, timeout=30, check=False
        )
        if completed.returncode == 0:
            return flags
    return None


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RingPair]:
    pair = start_pair(tmp_path_factory.mktemp("ring"), {"a": "ring", "b": "ring"}, API_KEY)
    try:
        yield pair
    finally:
        pair.kill()


@pytest.mark.parametrize("transport", ["ws", "sse", "longpoll"])
async def test_the_js_client_is_sent_to_the_owner_and_resumes_there(
    ring: RingPair, transport: str
) -> None:
    node = require_binary("node")
    flags = websocket_flags(node) if transport == "ws" else []
    if flags is None:
        missing(f"{node} has no WebSocket (Node 20 or later has, with --experimental-websocket)")
    channel = ring.channel(f"room:js-{transport}-", a="b", b="b")
    async with ring.api("b") as owner:
        head = (await owner.history(channel)).position
        await owner.publish(channel, {"n": 0})  # before the client: recovered from `since`
        since = json.dumps({"epoch": head.epoch, "offset": head.offset})
        client = await asyncio.create_subprocess_exec(
            node,
            *flags,
            "--no-warnings",
            str(SCRIPT),
            ring.url("a") + "/",
            transport,
            channel,
            since,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert client.stdout is not None
        try:
            first = await asyncio.wait_for(client.stdout.readline(), LINE_TIMEOUT_S)
            await owner.publish(channel, {"n": 1})
            second = await asyncio.wait_for(client.stdout.readline(), LINE_TIMEOUT_S)
        finally:
            client.kill()
            _, said = await client.communicate()
    publications = [json.loads(line) for line in (first, second) if line]
    assert [(p["channel"], p["data"]["n"], p["offset"]) for p in publications] == [
        (channel, 0, head.offset + 1),
        (channel, 1, head.offset + 2),
    ], said.decode()
    assert f"subscribed {channel} true" in said.decode()
