"""``tidings ring status`` (cli/ring.py): the ring a configuration names — none, a
static ``ring_nodes`` table, or the ring kept in a real etcd of the test's own, with
which of its nodes hold a live lease and which member is still joining — and one line
when etcd cannot be reached."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tests.support.etcd import etcd_server
from tests.support.server import free_port
from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.record import encode_ring
from tidings.cli import main
from tidings.core.handover import RingRecord
from tidings.server.runner import ExitStatus

PREFIX = "/test/ring-status"


def invoke(arguments: list[str], env: dict[str, str]) -> Result:
    environment: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith("TIDINGS_")
    }
    environment.update(env)
    return CliRunner().invoke(main, ["ring", "status", *arguments], env=environment)


@pytest.fixture(scope="module")
def etcd_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with etcd_server(tmp_path_factory.mktemp("etcd")) as url:
        asyncio.run(_write_ring(url))
        yield url


async def _write_ring(url: str) -> None:
    """A ring of version 3 with nodes a and b; a and c hold leases (b's expired, c is
    joining)."""
    gateway = EtcdGateway(url)
    try:
        ring = RingRecord(3, {"a": "http://a:8000", "b": "http://b:8000"})
        await gateway.put(f"{PREFIX}/ring", encode_ring(ring))
        lease = await gateway.grant(60)
        for node in ("a", "c"):
            await gateway.put(
                f"{PREFIX}/members/{node}", f"http://{node}:8000".encode(), lease=lease
            )
    finally:
        await gateway.aclose()


def test_a_ring_in_etcd_is_shown_with_its_version_nodes_and_members(etcd_url: str) -> None:
    env = {"TIDINGS_RING_ETCD": etcd_url, "TIDINGS_RING_PREFIX": PREFIX}
    text = invoke([], env)
    shown = invoke(["--json"], env)
    assert text.exit_code == 0, text.output
    assert text.output.splitlines() == [
        f"ring in etcd {etcd_url} under {PREFIX}, placement ring, version 3",
        "  a  http://a:8000  member",
        "  b  http://b:8000  no lease: being removed",
        "  c  http://c:8000  member, not in the ring yet: joining",
    ]
    assert json.loads(shown.output) == {
        "kept": "etcd",
        "etcd": etcd_url,
        "prefix": PREFIX,
        "placement": "ring",
        "version": 3,
        "nodes": {
            "a": {"url": "http://a:8000", "member": True},
            "b": {"url": "http://b:8000", "member": False},
        },
        "joining": {"c": "http://c:8000"},
    }


def test_a_static_ring_is_shown_from_the_configuration(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('node_id = "a"\n[ring_nodes]\na = "http://a:8000"\nb = "http://b:8000"\n')
    result = invoke(["--config", str(config)], {})
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "static ring (ring_nodes), placement ring, version 0",
        "  a  http://a:8000",
        "  b  http://b:8000",
    ]


def test_no_ring_says_so() -> None:
    result = invoke([], {})
    assert result.exit_code == 0
    assert "no ring" in result.output


def test_an_etcd_out_of_reach_is_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke([], {"TIDINGS_RING_ETCD": url})
    assert result.exit_code == ExitStatus.CONFIG
    assert result.output.count("\n") == 1
    assert url in result.output
