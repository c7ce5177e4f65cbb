"""``--access-log`` (server/access_log.py): one line per request on both backends, with
the client's address, method, path, status and duration, and ``token=`` redacted."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx

from tests.e2e.conftest import API_KEY, JWT_SECRET, api_headers, make_token
from tests.support.server import start_server
from tests.support.ws import ws_client

LINE = re.compile(r'tidings\.access: 127\.0\.0\.1:\d+ "(\S+) (\S+)" (\d{3}) \d+\.\dms$')


def access_lines(log: list[str]) -> list[tuple[str, str, int]]:
    """(method, target, status) of each access-log line."""
    found = []
    for line in log:
        match = LINE.search(line)
        if match is not None:
            found.append((match[1], match[2], int(match[3])))
    return found


async def test_the_access_log_has_one_line_per_request_and_no_token(config_file: Path) -> None:
    server = start_server(
        "--access-log",
        config=config_file,
        env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": JWT_SECRET},
    )
    token = make_token("alice")
    try:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/health")).status_code == 200
            poll = await http.get("/poll", params={"channel": "room:access", "token": token})
            assert poll.status_code == 200
            published = await http.post(
                "/api/publish",
                json={"channel": "room:access", "data": 1},
                headers=api_headers(),
            )
            assert published.status_code == 200
            refused = await http.get("/api/channels")
            assert refused.status_code == 401
        async with ws_client(f"{server.ws_url}?token={token}") as client:
            await client.result("connect")
    finally:
        await asyncio.to_thread(server.stop)
    lines = access_lines(server.log)
    assert ("GET", "/health", 200) in lines
    assert ("GET", "/poll?channel=room:access&token=[redacted]", 200) in lines
    assert ("POST", "/api/publish", 200) in lines
    assert ("GET", "/api/channels", 401) in lines
    assert ("GET", "/ws?token=[redacted]", 101) in lines
    assert token not in "\n".join(server.log)


async def test_there_is_no_access_log_unless_asked(config_file: Path) -> None:
    server = start_server(config=config_file)
    try:
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            assert (await http.get("/health")).status_code == 200
    finally:
        await asyncio.to_thread(server.stop)
    assert access_lines(server.log) == []
