"""Polling keeps a node's memory bounded, whatever polls a client sends (issue #11, items
4 and 6; docs/protocol.md §2.5).

Each test starts its own server, measures its resident memory (``tests/support/rss.py``)
once the legitimate state is made (histories published, a few polls answered), then
abuses it and measures again: the growth must stay under ``GROWTH_BOUND``. Before the
bounds, the abuse of each test grew a node by hundreds of MiB.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Final

import httpx

from tests.e2e.conftest import API_KEY, CONFIG, HTTP_TIMEOUT, serving
from tests.support.rss import MIB, rss_bytes
from tests.support.server import ServerProcess
from tidings.transports.watches import DEFAULT_MAX_WATCHES

GROWTH_BOUND: Final = 32 * MIB
# Channels per poll of new names: as many short names as one cursor can hold.
NAMES_PER_POLL: Final = 40
BIG_CHANNELS: Final = 8
PUBLICATIONS: Final = 600
DATA: Final = "x" * 8000


async def publish_big_histories(http: httpx.AsyncClient, channels: list[str]) -> str:
    """Give each of ``channels`` ``PUBLICATIONS`` of 8 KB; return their epoch."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    epoch = ""
    for _ in range(PUBLICATIONS):
        response = await http.post(
            "/api/broadcast", json={"channels": channels, "data": DATA}, headers=headers
        )
        assert response.status_code == 200, response.text
        epoch = response.json()["results"][0]["epoch"]
    return epoch


async def poll_ok(http: httpx.AsyncClient, params: list[tuple[str, str]]) -> None:
    response = await http.get("/poll", params=tuple(params))
    assert response.status_code == 200, response.text


def rss_growth_of(server: ServerProcess, before: int) -> int:
    return rss_bytes(server.process.pid) - before


async def test_polls_of_big_histories_with_junk_parameters_keep_the_node_bounded(
    tmp_path: Path,
) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    channels = [f"room:{uuid.uuid4().hex[:12]}" for _ in range(BIG_CHANNELS)]
    with serving(config) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT) as http:
            epoch = await publish_big_histories(http, channels)
            # The legitimate state: each channel polled (and so watched), a big answer
            # made once, so that the allocator holds what one answer needs.
            for channel in channels:
                await poll_ok(http, [("channel", channel), ("since", f"{epoch}:0")])
            before = rss_bytes(server.process.pid)
            for i in range(15 * BIG_CHANNELS):
                channel = channels[i % BIG_CHANNELS]
                far = i % 500  # read from the broker: up to 600 publications of 8 KB
                near = PUBLICATIONS - 1 - i % 90  # answered from the channel's watch
                for offset in (far, near):
                    params = [
                        ("channel", channel),
                        ("since", f"{epoch}:{offset}"),
                        ("limit", "1000"),
                        ("junk", str(i)),
                    ]
                    await poll_ok(http, params)
            head = f"{epoch}:{PUBLICATIONS}"
            for i in range(3000):
                # Every query string distinct, and long: a parse cache keyed on it fills.
                junk = f"{i:06d}" + "j" * 12_000
                await poll_ok(http, [("channel", channels[0]), ("since", head), ("junk", junk)])
            growth = rss_growth_of(server, before)
    assert growth < GROWTH_BOUND, f"the node grew by {growth / MIB:.1f} MiB"


async def test_polls_of_ever_new_channel_names_keep_the_node_bounded(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    with serving(config) as server:
        async with httpx.AsyncClient(base_url=server.http_url, timeout=HTTP_TIMEOUT) as http:

            async def poll_new_channels(count: int) -> None:
                for _ in range(count):
                    names = [uuid.uuid4().hex[:10] for _ in range(NAMES_PER_POLL)]
                    await poll_ok(http, [("channel", name) for name in names])

            # The legitimate state: as many channels watched as the cap (the default)
            # allows, each polled once.
            await poll_new_channels(DEFAULT_MAX_WATCHES // NAMES_PER_POLL + 1)
            before = rss_bytes(server.process.pid)
            await poll_new_channels(3000)  # 120,000 channel names more
            growth = rss_growth_of(server, before)
    assert growth < GROWTH_BOUND, f"the node grew by {growth / MIB:.1f} MiB"
