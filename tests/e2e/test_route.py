"""``GET /route`` (docs/protocol.md §9) and a static ring (``ring_nodes``) on a real
``tidings serve``, on the backend the suite runs on: the owner of a key or a channel
on a node of a ring, its own URL on a node without one, and the ring's answers to the
transports (a ``307`` to the owner, ``moved`` with its ``/ws`` URL)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY
from tests.support.server import ServerProcess, start_server
from tests.support.ws import ws_client
from tidings.core.ring import HashRing

pytestmark = pytest.mark.e2e

# Node b is never dialled: the node under test only names it.
B_URL: Final = "https://b.example:8443"
RING: Final = HashRing(["a", "b"])


def first_owned_by(node: str, prefix: str) -> str:
    return next(key for key in (f"{prefix}{n}" for n in range(1000)) if RING.owner(key) == node)


@pytest.fixture(scope="module")
def ring_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Node ``a`` of a ring of ``a`` and ``b``; ``a``'s URL is its ``public_url``."""
    config = tmp_path_factory.mktemp("ring") / "tidings.toml"
    config.write_text(
        f'node_id = "a"\npublic_url = "http://a.example:8000"\n'
        f'[ring_nodes]\na = "http://a.example:8000"\nb = "{B_URL}"\n'
        '[namespaces.inbox]\npolicy = "user"\n'
    )
    process = start_server(config=config, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


async def test_route_names_the_owner_of_a_key_and_of_a_channel(ring_node: ServerProcess) -> None:
    mine, theirs = first_owned_by("a", "doc:"), first_owned_by("b", "doc:")
    user = first_owned_by("b", "user:").removeprefix("user:")
    async with httpx.AsyncClient(base_url=ring_node.http_url) as client:
        answers = [
            (await client.get("/route", params=params)).json()
            for params in (
                {"channel": mine},
                {"channel": theirs},
                {"key": theirs},
                {"channel": f"inbox:{user}"},  # a user namespace routes by its user
            )
        ]
    assert answers == [
        {"url": "http://a.example:8000"},
        {"url": B_URL},
        {"url": B_URL},
        {"url": B_URL},
    ]


@pytest.mark.parametrize(
    ("params", "complaint"),
    [
        ({}, "exactly one key or one channel"),
        ({"key": "a", "channel": "b"}, "exactly one key or one channel"),
        ({"key": "k" * 256}, "key must be 1 to 255 characters"),
        ({"channel": "no spaces"}, "channel contains"),
    ],
)
async def test_a_route_request_without_one_valid_key_or_channel_is_a_bad_request(
    ring_node: ServerProcess, params: dict[str, str], complaint: str
) -> None:
    async with httpx.AsyncClient(base_url=ring_node.http_url) as client:
        response = await client.get("/route", params=params)
    assert response.status_code == 400
    assert complaint in response.json()["error"]["message"]


async def test_a_node_of_the_ring_sends_other_owners_channels_to_them(
    ring_node: ServerProcess,
) -> None:
    theirs = first_owned_by("b", "doc:")
    async with httpx.AsyncClient(base_url=ring_node.http_url) as client:
        sse = await client.get("/sse", params={"channel": theirs})
        poll = await client.get("/poll", params={"channel": first_owned_by("a", "doc:")})
    assert sse.status_code == 307
    assert sse.headers["location"] == f"{B_URL}/sse?channel={theirs.replace(':', '%3A')}"
    assert poll.status_code == 200
    async with ws_client(ring_node.ws_url) as ws:
        moved = await ws.request("subscribe", channel=theirs)
    assert moved["error"]["code"] == "moved"
    assert moved["error"]["url"] == "wss://b.example:8443/ws"


async def test_on_a_node_without_a_ring_every_key_is_served_by_itself(
    server: ServerProcess,
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as client:
        by_key = await client.get("/route", params={"key": "user:1"})
        by_channel = await client.get("/route", params={"channel": "doc:9"})
    assert by_key.json() == by_channel.json() == {"url": server.http_url}


def test_a_node_outside_its_own_ring_does_not_start(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(f'node_id = "c"\n[ring_nodes]\nb = "{B_URL}"\n')
    with pytest.raises(RuntimeError, match="node_id 'c' is not in ring_nodes"):
        start_server(config=config)
