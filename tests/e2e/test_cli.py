"""The ``tidings publish`` and ``tidings subscribe`` commands against a real server."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

from tests.e2e.conftest import API_KEY, api_client
from tests.support.server import ServerProcess
from tests.support.ws import ws_client

LINE_TIMEOUT_S: Final = 10.0
EXIT_TIMEOUT_S: Final = 20.0


async def run_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run ``tidings ARGUMENTS`` to completion (off the event loop)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "tidings", *arguments],
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )


@asynccontextmanager
async def cli_process(arguments: Sequence[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start ``tidings ARGUMENTS`` with pipes; kill it on exit if it still runs."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_json_line(process: asyncio.subprocess.Process) -> Any:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), LINE_TIMEOUT_S)
    assert line, "the process ended its output"
    return json.loads(line)


async def test_publish_prints_the_position_and_a_subscriber_receives_it(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        await client.result("subscribe", channel="room:cli-print")
        done = await run_cli(
            "publish",
            "room:cli-print",
            '{"text": "from the shell"}',
            "--server",
            node.http_url,
            "--api-key",
            API_KEY,
        )
        [publication] = await client.publications(1)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == {"epoch": publication["epoch"], "offset": 1}
    assert publication["data"] == {"text": "from the shell"}


async def test_publish_with_a_key_twice_prints_the_same_position(node: ServerProcess) -> None:
    arguments = ["publish", "room:k", "1", "--key", "once", "--server", node.http_url]
    first = await run_cli(*arguments, "--api-key", API_KEY)
    second = await run_cli(*arguments, "--api-key", API_KEY)
    assert first.returncode == second.returncode == 0
    assert json.loads(first.stdout) == json.loads(second.stdout)


async def test_publish_with_data_that_is_not_json_fails_with_a_clear_message(
    node: ServerProcess,
) -> None:
    done = await run_cli(
        "publish", "room:cli-bad", "{not json", "--server", node.http_url, "--api-key", API_KEY
    )
    assert done.returncode != 0
    assert "DATA must be JSON" in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


async def test_publish_with_a_wrong_api_key_fails_with_the_servers_error(
    node: ServerProcess,
) -> None:
    done = await run_cli("publish", "room:cli", "1", "--server", node.http_url, "--api-key", "no")
    assert done.returncode == 1
    assert "unauthorized" in done.stderr
    assert "Traceback" not in done.stderr


async def test_publish_to_an_unreachable_server_says_so(server: ServerProcess) -> None:
    server.kill()
    done = await run_cli("publish", "room:cli", "1", "--server", server.http_url)
    assert done.returncode == 1
    assert f"cannot reach {server.http_url}" in done.stderr
    assert "Traceback" not in done.stderr


async def test_subscribe_prints_publications_as_json_lines_and_sigint_exits_cleanly(
    node: ServerProcess,
) -> None:
    async with (
        api_client(node) as api,
        cli_process(["subscribe", "room:x", "--server", node.http_url]) as subscriber,
    ):
        await api.wait_for_subscribers("room:x", 1)
        sent = [await api.publish("room:x", {"n": n}) for n in (1, 2, 3)]
        lines = [await read_json_line(subscriber) for _ in sent]
        subscriber.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(subscriber.communicate(), EXIT_TIMEOUT_S)
    assert [(line["channel"], line["epoch"], line["offset"], line["data"]) for line in lines] == [
        ("room:x", position["epoch"], position["offset"], {"n": n})
        for n, position in zip((1, 2, 3), sent, strict=True)
    ]
    assert all(isinstance(line["ts"], int) for line in lines)
    assert subscriber.returncode == 0
    assert b"Traceback" not in stderr


async def test_subscribe_with_since_prints_the_missed_publications_first(
    node: ServerProcess,
) -> None:
    async with api_client(node) as api:
        first = await api.publish("room:since", {"n": 1})
        await api.publish("room:since", {"n": 2})
        since = f"{first['epoch']}:{first['offset']}"
        arguments = ["subscribe", "room:since", "--since", since, "--server", node.http_url]
        async with cli_process(arguments) as subscriber:
            missed = await read_json_line(subscriber)
            await api.wait_for_subscribers("room:since", 1)
            await api.publish("room:since", {"n": 3})
            live = await read_json_line(subscriber)
            subscriber.send_signal(signal.SIGTERM)
            await asyncio.wait_for(subscriber.wait(), EXIT_TIMEOUT_S)
    assert (missed["offset"], missed["data"]) == (2, {"n": 2})
    assert (live["offset"], live["data"]) == (3, {"n": 3})
    assert subscriber.returncode == 0


async def test_subscribe_to_a_forbidden_channel_fails_with_the_reason(
    node: ServerProcess,
) -> None:
    done = await run_cli("subscribe", "secret:x", "--server", node.http_url)
    assert done.returncode == 1
    assert "token" in done.stderr
    assert "Traceback" not in done.stderr
