"""``tidings subscribe --transport`` (cli.py, the subscribe command): JSON lines on
stdout, gap notices on stderr, Ctrl-C exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from click.testing import CliRunner

from tests.client.conftest import EVENT_TIMEOUT_S, TRANSPORTS, Node, publish_numbers
from tidings.cli import main
from tidings.client import ApiClient, TransportName
from tidings.core.publication import Position


@asynccontextmanager
async def cli_subscribe(*arguments: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """Run ``tidings subscribe ARGUMENTS`` with piped output; kill it if still running."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tidings",
        "subscribe",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def read_line(stream: asyncio.StreamReader | None) -> str:
    assert stream is not None
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        line = await stream.readline()
    assert line, "the command ended early"
    return line.decode()


async def interrupt(process: asyncio.subprocess.Process) -> int:
    """Ctrl-C: send SIGINT and return the exit code."""
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        return await process.wait()


@pytest.mark.e2e
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_subscribe_prints_json_lines_over_each_transport_and_ctrl_c_exits_0(
    node: Node, api: ApiClient, transport: TransportName
) -> None:
    channel = f"room:cli-{transport}"
    head = (await api.history(channel)).position
    arguments = ["--server", node.http_url, "--since", str(head), "--transport", transport]
    async with cli_subscribe(channel, *arguments, "--poll-interval", "0.05") as process:
        await publish_numbers(api, channel, range(1, 3))
        lines = [await read_line(process.stdout), await read_line(process.stdout)]
        assert await interrupt(process) == 0
        assert process.stderr is not None
        assert b"Traceback" not in await process.stderr.read()
    frames = [json.loads(line) for line in lines]
    assert [(f["channel"], f["offset"], f["data"]) for f in frames] == [
        (channel, 1, {"n": 1}),
        (channel, 2, {"n": 2}),
    ]


@pytest.mark.e2e
async def test_subscribe_reports_a_gap_on_stderr(node: Node, api: ApiClient) -> None:
    channel = "small:cli-gap"  # history_size = 5
    await publish_numbers(api, channel, range(1, 11))
    head = (await api.history(channel)).position
    since = Position(head.epoch, 1)
    arguments = ["--server", node.http_url, "--since", str(since), "--transport", "sse"]
    async with cli_subscribe(channel, *arguments) as process:
        notice = await read_line(process.stderr)
        while notice.startswith("tidings: "):  # what the client is doing: connecting
            notice = await read_line(process.stderr)
        assert await interrupt(process) == 0
    assert notice.startswith(f"gap in {channel}: publications after {since} were lost")
    assert str(head) in notice


@pytest.mark.e2e
async def test_subscribe_to_a_forbidden_channel_fails_with_the_servers_reason(node: Node) -> None:
    async with cli_subscribe("secret:x", "--server", node.http_url) as process:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            _, stderr = await process.communicate()
    assert process.returncode == 1
    assert b"permission_denied" in stderr


@pytest.mark.e2e
async def test_subscribe_says_on_stderr_that_it_connects_and_why_it_reconnects(
    idle_node: Node,
) -> None:
    # Nothing listens on the node's port yet: the client says so instead of staying silent.
    async with cli_subscribe("room:cli-says", "--url", idle_node.http_url) as process:
        connecting = await read_line(process.stderr)
        ended = await read_line(process.stderr)
        assert await interrupt(process) == 0
    assert connecting == f"tidings: connecting to {idle_node.http_url} over ws\n"
    assert ended.startswith(f"tidings: ws connection to {idle_node.http_url} ended (")
    assert "reconnecting in" in ended


def test_subscribe_help_lists_the_transports() -> None:
    result = CliRunner().invoke(main, ["subscribe", "--help"])
    assert result.exit_code == 0
    assert "[auto|ws|sse|longpoll|poll]" in result.output


def test_subscribe_refuses_an_unknown_transport() -> None:
    result = CliRunner().invoke(main, ["subscribe", "room:x", "--transport", "carrier-pigeon"])
    assert result.exit_code == 2
    assert "carrier-pigeon" in result.output
