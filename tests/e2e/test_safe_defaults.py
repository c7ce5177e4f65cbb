"""Safe defaults against a real ``tidings serve`` (issue #11, items 8, 9, 10 and 15).

- An open server API (no ``api_key``) cannot be used by a web page through its
  visitor's browser: a cross-site request is refused, so is a ``Host`` that is not a
  loopback name (DNS rebinding), and a POST must be JSON (a page can send ``text/plain``
  cross-site without a preflight). ``POST /api/publish`` is served by the native
  server's own fast path and the other calls through Starlette: both are checked.
- A node refuses to start, in one line, with an open API beyond loopback, an empty
  secret, or a limit no client could live with.
- ``allowed_origins = ["*"]`` lets any page connect with credentials it holds itself,
  never with its visitor's cookie; a listed origin and the node's own pages may.
- ``max_channels_per_connection`` bounds SSE streams and polls too.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest

from tests.e2e.conftest import API_KEY, CONFIG, HTTP_TIMEOUT, JWT_SECRET, make_token, unique
from tests.support.server import SERVER_BACKEND_VARIABLE, ServerProcess, free_port, start_server
from tests.support.sse import sse_stream
from tests.support.ws import ws_client

EVIL: Final = "https://evil.example"
LISTED: Final = "https://app.example.com"
EXIT_TIMEOUT_S: Final = 30.0
CHANNEL_LIMIT: Final = 2
# What a page's ``fetch(url, {method: "POST", mode: "no-cors", body})`` sends.
NO_CORS_POST: Final = {
    "Content-Type": "text/plain;charset=UTF-8",
    "Origin": EVIL,
    "Sec-Fetch-Site": "cross-site",
    "Sec-Fetch-Mode": "no-cors",
}


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    code: str = response.json()["error"]["code"]
    return code


# -- an open server API ---------------------------------------------------------------


@pytest.fixture(scope="module")
def open_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node with no api_key, on loopback (as the defaults have it), and a small
    ``max_channels_per_connection``."""
    config = tmp_path_factory.mktemp("open") / "tidings.toml"
    config.write_text(CONFIG)
    env = {"TIDINGS_MAX_CHANNELS_PER_CONNECTION": str(CHANNEL_LIMIT)}
    process = start_server(config=config, env=env)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
async def local(open_node: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """A backend on this machine calling the open node (no Origin, loopback Host)."""
    async with httpx.AsyncClient(base_url=open_node.http_url, timeout=HTTP_TIMEOUT) as client:
        yield client


async def offset_of(local: httpx.AsyncClient, channel: str) -> int:
    response = await local.get("/api/history", params={"channel": channel})
    assert response.status_code == 200, response.text
    offset: int = response.json()["offset"]
    return offset


async def test_an_open_api_serves_a_local_backend(local: httpx.AsyncClient) -> None:
    channel = unique()
    published = await local.post("/api/publish", json={"channel": channel, "data": 1})
    broadcast = await local.post("/api/broadcast", json={"channels": [channel], "data": 2})
    assert (published.status_code, broadcast.status_code) == (200, 200), broadcast.text
    assert await offset_of(local, channel) == 2


async def test_an_open_api_serves_the_nodes_own_pages(
    open_node: ServerProcess, local: httpx.AsyncClient
) -> None:
    channel = unique()
    headers = {"Origin": open_node.http_url, "Sec-Fetch-Site": "same-origin"}
    response = await local.post(
        "/api/publish", json={"channel": channel, "data": 1}, headers=headers
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/publish", {"channel": "room:csrf", "data": "forged"}),  # the native fast path
        ("/api/broadcast", {"channels": ["room:csrf"], "data": "forged"}),
    ],
)
async def test_an_open_api_refuses_a_cross_site_no_cors_post_and_publishes_nothing(
    local: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    channel = unique()
    body = {**body, **({"channel": channel} if "channel" in body else {"channels": [channel]})}
    response = await local.post(path, json=body, headers=NO_CORS_POST)
    assert response.status_code == 403, response.text
    assert error_code(response) == "permission_denied"
    assert "other sites" in response.json()["error"]["message"]
    assert await offset_of(local, channel) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": EVIL},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
    ids=["origin", "null-origin", "fetch-cross-site", "fetch-same-site"],
)
async def test_an_open_api_refuses_any_sign_of_another_site(
    local: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    channel = unique()
    publish = await local.post(
        "/api/publish", json={"channel": channel, "data": 1}, headers=headers
    )
    disconnect = await local.post("/api/disconnect", json={"user": "alice"}, headers=headers)
    history = await local.get("/api/history", params={"channel": channel}, headers=headers)
    assert [publish.status_code, disconnect.status_code, history.status_code] == [403] * 3
    assert await offset_of(local, channel) == 0


async def test_an_open_api_refuses_a_dns_rebound_host(
    open_node: ServerProcess, local: httpx.AsyncClient
) -> None:
    # A page of rebound.example whose name now resolves to 127.0.0.1 is same-origin
    # with the node as far as the browser knows, but it still sends its own name.
    channel = unique()
    await local.post("/api/publish", json={"channel": channel, "data": "private"})
    rebound = {"Host": f"rebound.example:{open_node.port}"}
    history = await local.get("/api/history", params={"channel": channel}, headers=rebound)
    publish = await local.post(
        "/api/publish", json={"channel": channel, "data": 2}, headers=rebound
    )
    assert (history.status_code, publish.status_code) == (403, 403)
    assert "loopback Host" in history.json()["error"]["message"]
    assert "private" not in history.text
    assert await offset_of(local, channel) == 1


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
async def test_an_open_api_answers_every_loopback_host_name(
    open_node: ServerProcess, local: httpx.AsyncClient, host: str
) -> None:
    headers = {"Host": f"{host}:{open_node.port}"}
    response = await local.get("/api/channels", headers=headers)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/api/publish", "/api/disconnect"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
async def test_an_open_api_refuses_a_post_that_is_not_json(
    local: httpx.AsyncClient, path: str, content_type: str | None
) -> None:
    channel = unique()
    publish = b'{"channel": "%s", "data": 1}' % channel.encode()
    body = b'{"user": "u"}' if path == "/api/disconnect" else publish
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = await local.post(path, content=body, headers=headers)
    assert response.status_code == 400, response.text
    assert error_code(response) == "bad_request"
    assert "application/json" in response.json()["error"]["message"]
    assert await offset_of(local, channel) == 0


async def test_a_json_content_type_with_parameters_is_json(local: httpx.AsyncClient) -> None:
    channel = unique()
    response = await local.post(
        "/api/publish",
        content=b'{"channel": "%s", "data": 1}' % channel.encode(),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200, response.text


async def test_pipelined_publishes_on_one_connection_are_each_admitted(
    open_node: ServerProcess, local: httpx.AsyncClient
) -> None:
    # The native server serves a run of pipelined publishes in one go: a forged one
    # between two good ones is refused alone.
    channel = unique()

    def request(extra: bytes) -> bytes:
        body = b'{"channel": "%s", "data": 1}' % channel.encode()
        return (
            b"POST /api/publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"%bContent-Length: %d\r\n\r\n%b" % (extra, len(body), body)
        )

    reader, writer = await asyncio.open_connection("127.0.0.1", open_node.port)
    try:
        writer.write(request(b"") + request(b"Origin: %b\r\n" % EVIL.encode()) + request(b""))
        await writer.drain()
        statuses = []
        for _ in range(3):
            status_line = await asyncio.wait_for(reader.readline(), 10)
            statuses.append(int(status_line.split()[1]))
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
    finally:
        writer.close()
    assert statuses == [200, 403, 200]
    assert await offset_of(local, channel) == 2


# -- a keyed server API: the key is the door, and POSTs are JSON all the same ----------


@pytest.fixture(scope="module")
def keyed_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    config = tmp_path_factory.mktemp("keyed") / "tidings.toml"
    config.write_text(CONFIG)
    process = start_server(config=config, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


async def test_a_keyed_api_takes_json_posts_only_and_any_host(keyed_node: ServerProcess) -> None:
    key = {"Authorization": f"Bearer {API_KEY}"}
    channel = unique()
    body = b'{"channel": "%s", "data": 1}' % channel.encode()
    async with httpx.AsyncClient(base_url=keyed_node.http_url, timeout=HTTP_TIMEOUT) as http:
        plain = await http.post(
            "/api/publish", content=body, headers={**key, "Content-Type": "text/plain"}
        )
        named = await http.post(
            "/api/publish",
            content=body,
            headers={**key, "Content-Type": "application/json", "Host": "tidings.internal"},
        )
        no_key = await http.post(
            "/api/publish", content=body, headers={"Content-Type": "application/json"}
        )
    assert plain.status_code == 400, plain.text
    assert named.status_code == 200, named.text
    assert no_key.status_code == 401, no_key.text


# -- start-up refusals: one line, a non-zero exit ----------------------------------------


def serve_until_exit(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tidings", "serve", "--port", str(free_port()), *arguments]
    backend = os.environ.get(SERVER_BACKEND_VARIABLE)
    if backend:
        command += ["--server-backend", backend]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
    environment.update(env)
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=environment,
        timeout=EXIT_TIMEOUT_S,
        check=False,
    )


@pytest.mark.parametrize(
    ("arguments", "env", "message"),
    [
        (("--host", "0.0.0.0"), {}, "no api_key is set"),
        ((), {"TIDINGS_HOST": "::"}, "allow_open_api = true"),
        ((), {"TIDINGS_API_KEY": ""}, "api_key is empty"),
        ((), {"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": ""}, "jwt_secret is empty"),
        ((), {"TIDINGS_COMMAND_RATE": "0"}, "command_rate must be more than 0"),
        ((), {"TIDINGS_MAX_CHANNELS_PER_CONNECTION": "0"}, "max_channels_per_connection"),
    ],
    ids=[
        "open-api-any-address",
        "open-api-ipv6-any",
        "empty-key",
        "empty-secret",
        "zero-rate",
        "zero-channels",
    ],
)
def test_a_node_refuses_to_start_with_one_line_and_a_nonzero_exit(
    arguments: tuple[str, ...], env: dict[str, str], message: str
) -> None:
    result = serve_until_exit(*arguments, env=env)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_an_open_api_beyond_loopback_starts_when_allowed_explicitly(tmp_path: Path) -> None:
    config = tmp_path / "tidings.toml"
    config.write_text('host = "0.0.0.0"\nallow_open_api = true\n')
    process = start_server(config=config)
    try:
        response = httpx.get(f"{process.http_url}/health", timeout=HTTP_TIMEOUT)
        assert response.status_code == 200
    finally:
        process.kill()


# -- allowed_origins = ["*"]: any page, never with its visitor's cookie -------------------


@pytest.fixture(scope="module")
def wildcard_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A node requiring tokens, allowing ``*`` and one origin by name."""
    config = tmp_path_factory.mktemp("wildcard") / "tidings.toml"
    config.write_text(f'allowed_origins = ["*", "{LISTED}"]\n' + CONFIG)
    env = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": JWT_SECRET}
    process = start_server(config=config, env=env)
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
async def browser(wildcard_node: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=wildcard_node.http_url, timeout=HTTP_TIMEOUT) as client:
        yield client


def secret_channel() -> str:
    return f"secret:{uuid.uuid4().hex[:12]}"


def cookie_of(channel: str) -> dict[str, str]:
    """The ``tidings_token`` cookie a user's browser holds for ``channel``."""
    return {"Cookie": f"tidings_token={make_token('alice', channels=[channel])}"}


def assert_cors_without_credentials(response: httpx.Response) -> None:
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers


async def test_sse_ignores_the_cookie_of_a_page_admitted_by_the_wildcard(
    browser: httpx.AsyncClient,
) -> None:
    channel = secret_channel()
    headers = {"Origin": EVIL, **cookie_of(channel)}
    async with sse_stream(browser, {"channel": channel}, headers=headers) as stream:
        response = stream.response
        assert response.status_code == 401  # checked first: a 200 stream never ends
        await response.aread()
    assert error_code(response) == "unauthorized"
    assert_cors_without_credentials(response)


async def test_sse_from_the_wildcard_works_with_the_pages_own_token(
    browser: httpx.AsyncClient,
) -> None:
    channel = secret_channel()
    token = make_token("alice", channels=[channel])
    params = {"channel": channel, "token": token}
    async with sse_stream(browser, params, headers={"Origin": EVIL}) as stream:
        assert stream.response.status_code == 200
        assert (await stream.next_event()).type == "subscribed"
        assert_cors_without_credentials(stream.response)


@pytest.mark.parametrize("origin", [LISTED, "own"])
async def test_sse_takes_the_cookie_of_a_listed_origin_or_the_nodes_own_page(
    wildcard_node: ServerProcess, browser: httpx.AsyncClient, origin: str
) -> None:
    origin = wildcard_node.http_url if origin == "own" else origin
    channel = secret_channel()
    headers = {"Origin": origin, **cookie_of(channel)}
    async with sse_stream(browser, {"channel": channel}, headers=headers) as stream:
        assert stream.response.status_code == 200
        assert (await stream.next_event()).type == "subscribed"
        if origin == LISTED:
            assert stream.response.headers["access-control-allow-origin"] == LISTED
            assert stream.response.headers["access-control-allow-credentials"] == "true"


async def test_poll_takes_the_cookie_of_a_listed_origin_only_on_both_doors(
    browser: httpx.AsyncClient,
) -> None:
    # The first poll of a channel is read from the broker (the ASGI door); once the
    # channel is watched, the native server answers polls itself: both are checked.
    channel = secret_channel()
    listed = {"Origin": LISTED, **cookie_of(channel)}
    evil = {"Origin": EVIL, **cookie_of(channel)}
    for _ in range(2):
        allowed = await browser.get("/poll", params={"channel": channel}, headers=listed)
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["access-control-allow-origin"] == LISTED
        assert allowed.headers["access-control-allow-credentials"] == "true"
        refused = await browser.get("/poll", params={"channel": channel}, headers=evil)
        assert refused.status_code == 401, refused.text
        assert_cors_without_credentials(refused)
    token = make_token("alice", channels=[channel])
    own_token = await browser.get(
        "/poll", params={"channel": channel, "token": token}, headers={"Origin": EVIL}
    )
    assert own_token.status_code == 200, own_token.text
    assert_cors_without_credentials(own_token)


@pytest.mark.parametrize("path", ["/sse", "/poll"])
async def test_a_wildcard_preflight_allows_no_credentials(
    browser: httpx.AsyncClient, path: str
) -> None:
    request = {"Access-Control-Request-Method": "GET"}
    wildcard = await browser.options(path, headers={"Origin": EVIL, **request})
    listed = await browser.options(path, headers={"Origin": LISTED, **request})
    assert wildcard.status_code == 204
    assert_cors_without_credentials(wildcard)
    assert listed.headers["access-control-allow-credentials"] == "true"


async def test_a_websocket_from_the_wildcard_is_not_authenticated_by_a_cookie(
    wildcard_node: ServerProcess,
) -> None:
    channel = secret_channel()
    async with ws_client(wildcard_node.ws_url, headers=cookie_of(channel), origin=EVIL) as ws:
        reply = await ws.request("connect")
    assert reply["error"]["code"] == "unauthorized", reply


# -- max_channels_per_connection bounds SSE and polling too (item 15) -------------------


async def test_sse_and_poll_refuse_more_channels_than_a_connection_may_hold(
    local: httpx.AsyncClient,
) -> None:
    too_many = {"channel": [unique() for _ in range(CHANNEL_LIMIT + 1)]}
    enough = {"channel": too_many["channel"][:CHANNEL_LIMIT]}
    async with sse_stream(local, too_many) as stream:
        refused_stream = stream.response
        assert refused_stream.status_code == 400  # checked first: a 200 stream never ends
        await refused_stream.aread()
    refused_polls = [await local.get("/poll", params=too_many) for _ in range(2)]
    assert (await local.get("/poll", params=enough)).status_code == 200
    for response in (refused_stream, *refused_polls):
        assert response.status_code == 400, response.text
        assert error_code(response) == "bad_request"
        message = response.json()["error"]["message"]
        assert f"max_channels_per_connection allows {CHANNEL_LIMIT}" in message
    async with sse_stream(local, enough) as stream:
        assert stream.response.status_code == 200


# -- the sqlite data directory is private (item 14) ------------------------------------


def test_a_node_creates_its_data_directory_private_and_warns_about_an_open_one(
    tmp_path: Path,
) -> None:
    previous = os.umask(0o002)  # a umask that would let every user read new files
    try:
        created = start_server(data=tmp_path / "new")
        existing = tmp_path / "old"
        existing.mkdir()
        existing.chmod(0o755)
        warned = start_server(data=existing)
    finally:
        os.umask(previous)
    try:
        modes = {
            path.name: stat.S_IMODE(path.stat().st_mode) for path in (tmp_path / "new").iterdir()
        }
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        assert "tidings.db" in modes
        assert set(modes.values()) == {0o600}, modes
        warnings = [line for line in warned.log if "WARNING" in line and str(existing) in line]
        assert len(warnings) == 1, warned.log
    finally:
        created.kill()
        warned.kill()
