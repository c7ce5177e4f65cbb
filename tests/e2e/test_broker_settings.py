"""A broker's own settings from the configuration file (``[brokers.redis]``): a real
``tidings serve`` node on the shared Redis keeps its keys under the file's prefix, and
under the URL's when both set one (docs/configuration.md, "Broker settings")."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.conftest import API_KEY
from tests.support.server import start_server
from tests.support.services import REDIS_HOST, REDIS_PORT, require_service

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("url_prefix", [False, True], ids=["file", "url-wins"])
async def test_a_node_keeps_its_keys_under_the_prefix_of_its_brokers_table(
    tmp_path: Path, url_prefix: bool
) -> None:
    require_service(REDIS_HOST, REDIS_PORT, "Redis")
    file_prefix, url_prefix_value = (f"tidings-e2e-{secrets.token_hex(4)}" for _ in range(2))
    url = f"redis://{REDIS_HOST}:{REDIS_PORT}/0"
    if url_prefix:
        url += f"?prefix={url_prefix_value}"
    config = tmp_path / "tidings.toml"
    config.write_text(f'broker = "{url}"\n\n[brokers.redis]\nprefix = "{file_prefix}"\n')
    node = start_server(config=config, env={"TIDINGS_API_KEY": API_KEY})
    try:
        async with httpx.AsyncClient() as http:
            response = await http.post(
                f"{node.http_url}/api/publish",
                json={"channel": "news:1", "data": {"n": 1}},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
        assert response.status_code == 200, response.text
    finally:
        node.stop()
    with redis.Redis.from_url(url.split("?", maxsplit=1)[0]) as client:
        under_file = client.keys(f"{file_prefix}:*")
        under_url = client.keys(f"{url_prefix_value}:*")
        if under_file or under_url:
            client.delete(*under_file, *under_url)
    assert (bool(under_file), bool(under_url)) == (not url_prefix, url_prefix)
