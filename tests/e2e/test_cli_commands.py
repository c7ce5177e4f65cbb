"""``tidings token``, ``history``, ``channels`` and ``presence`` against a real node, and
the README's quick start against a ``--demo`` node."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from typing import Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY, JWT_SECRET, api_client
from tests.e2e.test_cli import cli_process, read_json_line
from tests.support.server import ServerProcess, start_server
from tests.support.ws import ws_client

EXIT_TIMEOUT_S: Final = 20.0


async def tidings(
    *arguments: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``tidings ARGUMENTS`` to completion with only ``env`` of the TIDINGS_* variables."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(env or {})
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tidings", *arguments],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        env=environment,
        check=False,
    )


# -- tidings token ----------------------------------------------------------------------


async def test_a_token_from_the_cli_is_accepted_by_a_node_with_that_secret(
    auth_node: ServerProcess,
) -> None:
    done = await tidings(
        "token", "--user", "alice", "--channels", "room:*", "--ttl", "1h",
        env={"TIDINGS_JWT_SECRET": JWT_SECRET},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    async with ws_client(f"{auth_node.ws_url}?token={token}") as client:
        connected = await client.result("connect")
        assert connected["user"] == "alice"
        await client.result("subscribe", channel="room:cli-token")
        refused = await client.request("subscribe", channel="secret:cli-token")
    assert refused["error"]["code"] == "permission_denied"  # outside the token's channels


async def test_a_token_signed_with_another_secret_is_refused(auth_node: ServerProcess) -> None:
    other_secret = "another-secret-long-enough-for-hs256-but-not-the-nodes"
    done = await tidings("token", "--user", "mallory", env={"TIDINGS_JWT_SECRET": other_secret})
    assert done.returncode == 0, done.stderr
    async with ws_client(f"{auth_node.ws_url}?token={done.stdout.strip()}") as client:
        assert await client.wait_closed() == 4001


async def test_token_without_a_secret_says_how_to_set_one() -> None:
    done = await tidings("token", "--user", "alice")
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1
    assert "TIDINGS_JWT_SECRET" in done.stderr
    assert done.stdout == ""


# -- server API commands ----------------------------------------------------------------


async def test_history_prints_publications_as_json_lines(node: ServerProcess) -> None:
    async with api_client(node) as api:
        for n in range(1, 4):
            await api.publish("room:cli-history", {"n": n})
    done = await tidings(
        "history", "room:cli-history", "--limit", "2", "--url", node.http_url,
        env={"TIDINGS_API_KEY": API_KEY},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["data"] for line in lines] == [{"n": 2}, {"n": 3}]
    assert "room:cli-history is at" in done.stderr


async def test_channels_and_presence_list_what_the_node_holds(node: ServerProcess) -> None:
    async with ws_client(node.ws_url) as client:
        connected = await client.result("connect")
        await client.result("subscribe", channel="room:cli-who")
        listed = await tidings(
            "channels", "--prefix", "room:cli-w", "--url", node.http_url, "--api-key", API_KEY
        )
        present = await tidings(
            "presence", "room:cli-who", "--url", node.http_url, "--api-key", API_KEY
        )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout == "room:cli-who\t1\n"
    assert present.returncode == 0, present.stderr
    assert present.stdout == f"{connected['client']}\t\n"  # anonymous: no user


async def test_a_wrong_and_a_missing_api_key_get_different_messages(
    node: ServerProcess,
) -> None:
    wrong = await tidings("channels", "--url", node.http_url, "--api-key", "not-the-key")
    missing = await tidings("channels", "--url", node.http_url)
    assert wrong.returncode == missing.returncode == 1
    assert "unauthorized" in wrong.stderr
    assert "unauthorized" in missing.stderr
    assert wrong.stderr != missing.stderr
    assert "Traceback" not in wrong.stderr + missing.stderr


# -- the README's quick start on a --demo node -------------------------------------------


@pytest.fixture
def demo_node() -> Iterator[ServerProcess]:
    process = start_server("--demo")
    try:
        yield process
    finally:
        process.kill()


async def test_the_quick_start_works_against_a_demo_node(demo_node: ServerProcess) -> None:
    assert any("signs a connection token for any name" in line for line in demo_node.log)
    async with httpx.AsyncClient(base_url=demo_node.http_url) as http:
        answer = await http.post("/demo/token", json={"name": "alice"})
    token = answer.json()["token"]
    # Subscribe from the channel's current position, so the publication below cannot
    # land before the subscription is made (and be missed).
    head = await tidings("history", "room:45", "--url", demo_node.http_url)
    since = head.stderr.strip().rpartition(" ")[2]
    subscribe = ["subscribe", "room:45", "--url", demo_node.http_url, "--token", token]
    async with cli_process([*subscribe, "--since", since]) as subscriber:
        published = await tidings(
            "publish", "room:45", '{"text": "hello"}', "--url", demo_node.http_url
        )
        assert published.returncode == 0, published.stderr
        printed = await read_json_line(subscriber)
    assert printed["data"] == {"text": "hello"}
