"""examples/node_subscribe.mjs against a real node: the JavaScript client in Node 20+
over WebSocket, with the ``ws`` package passed explicitly, installed as the docs say
(``npm install ws <repository>/clients/js``). Needs node and npm (and the npm registry
for ``ws``): skipped with the reason locally when missing, failed under CI=true."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Final

import httpx

from tests.support.server import start_server
from tests.support.services import missing, require_binary

ROOT: Final = Path(__file__).resolve().parents[2]
NPM_TIMEOUT_S: Final = 300.0
LINE_TIMEOUT_S: Final = 30.0


async def test_the_node_example_receives_over_websocket_with_ws(tmp_path: Path) -> None:
    node = require_binary("node")
    npm = require_binary("npm")
    installed = await asyncio.to_thread(
        subprocess.run,
        [npm, "install", "--no-audit", "--no-fund", "ws@8", str(ROOT / "clients" / "js")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=NPM_TIMEOUT_S,
        check=False,
    )
    if installed.returncode != 0:
        missing(f"npm could not install ws and the client: {installed.stderr[-500:]}")
    shutil.copy(ROOT / "examples" / "node_subscribe.mjs", tmp_path / "node_subscribe.mjs")

    server = await asyncio.to_thread(start_server)
    example = await asyncio.create_subprocess_exec(
        node,
        "node_subscribe.mjs",
        "room:node",
        cwd=tmp_path,
        env={"TIDINGS_SERVER": server.http_url, "PATH": "/usr/bin:/bin"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert example.stdout is not None
    assert example.stderr is not None
    try:
        said: list[str] = []
        while "connected (ws)" not in said:
            line = await asyncio.wait_for(example.stderr.readline(), LINE_TIMEOUT_S)
            assert line, f"the example ended: {said}"
            said.append(line.decode().strip())
        async with httpx.AsyncClient(base_url=server.http_url) as http:
            body = {"channel": "room:node", "data": {"text": "hi node"}}
            assert (await http.post("/api/publish", json=body)).status_code == 200
        printed = await asyncio.wait_for(example.stdout.readline(), LINE_TIMEOUT_S)
        publication = json.loads(printed)
        assert publication["channel"] == "room:node"
        assert publication["data"] == {"text": "hi node"}
    finally:
        example.kill()
        await example.wait()
        server.kill()
