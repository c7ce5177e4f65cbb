"""The JavaScript client follows owner routing (docs/protocol.md §9) between real nodes:
two ``tidings serve`` processes of one static ring, the client (in Node, over each
transport) given the node that does not serve its channel, resuming on the owner from
the position it was given; and, the owner killed, going back to the node it was given
(§12 rule 6). Needs node (>= 20), not a browser."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from tests.support.ring_nodes import RingPair, start_pair
from tests.support.server import start_server
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


async def start_client(
    node: str, flags: list[str], url: str, transport: str, channel: str, *, since: str | None = None
) -> asyncio.subprocess.Process:
    """Run owner_routing.mjs: the client subscribing ``channel`` at ``url``."""
    return await asyncio.create_subprocess_exec(
        node,
        *flags,
        "--no-warnings",
        str(SCRIPT),
        url + "/",
        transport,
        channel,
        *([since] if since is not None else []),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def node_and_flags(transport: str) -> tuple[str, list[str]]:
    """node, and its options for ``transport`` (skipped without a WebSocket for "ws")."""
    node = require_binary("node")
    flags = websocket_flags(node) if transport == "ws" else []
    if flags is None:
        missing(f"{node} has no WebSocket (Node 20 or later has, with --experimental-websocket)")
    return node, flags


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
    node, flags = node_and_flags(transport)
    channel = ring.channel(f"room:js-{transport}-", a="b", b="b")
    async with ring.api("b") as owner:
        head = (await owner.history(channel)).position
        await owner.publish(channel, {"n": 0})  # before the client: recovered from `since`
        since = json.dumps({"epoch": head.epoch, "offset": head.offset})
        client = await start_client(node, flags, ring.url("a"), transport, channel, since=since)
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


@pytest.mark.parametrize("transport", ["ws", "sse", "longpoll"])
async def test_the_js_client_sent_to_an_owner_that_died_goes_back_to_the_node_given(
    tmp_path: Path, transport: str
) -> None:
    # The client is given b, which sends it to a, the owner. The ring changes (b is
    # restarted as its only node: it serves every channel now) and a is killed: the
    # client does not knock at a for ever, it asks b again, which serves the channel
    # in an epoch of its own and says so (a gap), then delivers b's publication.
    node, flags = node_and_flags(transport)
    pair = start_pair(tmp_path, {"a": "ring", "b": "ring"}, API_KEY)
    try:
        channel = pair.channel(f"room:js-dead-{transport}-", a="a", b="a")
        client = await start_client(node, flags, pair.url("b"), transport, channel)
        assert client.stdout is not None
        assert client.stderr is not None
        try:
            # Subscribed at a (b redirected it there), from now on.
            at_a = await asyncio.wait_for(client.stderr.readline(), LINE_TIMEOUT_S)
            async with pair.api("a") as api:
                await api.publish(channel, {"n": 0})
            first = await asyncio.wait_for(client.stdout.readline(), LINE_TIMEOUT_S)
            restart_alone(pair, "b", tmp_path)  # a still serves the client meanwhile
            pair.servers["a"].kill()
            gap = await asyncio.wait_for(client.stdout.readline(), LINE_TIMEOUT_S)
            async with pair.api("b") as api:
                await api.publish(channel, {"n": 1})
            at_b = await asyncio.wait_for(client.stdout.readline(), LINE_TIMEOUT_S)
        finally:
            client.kill()
            _, stderr = await client.communicate()
    finally:
        pair.kill()
    said = stderr.decode()
    assert at_a.decode().strip() == f"subscribed {channel} false", said
    position_at_a = {key: json.loads(first)[key] for key in ("epoch", "offset")}
    assert json.loads(gap)["gap"]["since"] == position_at_a, said
    assert json.loads(gap)["gap"]["position"]["epoch"] != position_at_a["epoch"]
    publication = json.loads(at_b)
    assert (publication["channel"], publication["data"]) == (channel, {"n": 1})
    assert f"subscribed {channel} false" in said  # again, at b: not recovered
    assert "error" not in said


def restart_alone(pair: RingPair, name: str, directory: Path) -> None:
    """Restart node ``name`` on its port as the only node of its ring."""
    server = pair.servers[name]
    server.kill()
    config = directory / f"{name}-alone.toml"
    config.write_text(
        f'shutdown_timeout = "1s"\nplacement = "ring"\n'
        f'[ring_nodes]\n{name} = "{server.http_url}"\n[namespaces.room]\nhistory_size = 100\n'
    )
    env = {"TIDINGS_API_KEY": pair.api_key, "TIDINGS_NODE_ID": name}
    pair.servers[name] = start_server(port=server.port, config=config, env=env)
