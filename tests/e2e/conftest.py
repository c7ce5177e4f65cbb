"""Fixtures for end-to-end tests: a real ``tidings serve`` process per test, or one per
module (``node``, ``auth_node``) for tests that keep to channels and users of their own."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import jwt
import pytest

from tests.support.api import ApiClient
from tests.support.server import ServerProcess, start_server
from tests.support.ws import Frame, WsClient

API_KEY = "e2e-api-key"
JWT_SECRET = "e2e-jwt-secret-that-is-long-enough-for-hs256"

# Namespaces the end-to-end tests use, on top of the defaults (public default, user).
CONFIG = """
[namespaces.room]
client_publish = true
presence = true
history_size = 2000

[namespaces.small]
history_size = 5

[namespaces.tiny]
max_data_size = "1KiB"

[namespaces.secret]
policy = "token"
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """The e2e TOML configuration."""
    path = tmp_path / "tidings.toml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def server(config_file: Path) -> Iterator[ServerProcess]:
    """A memory-broker server with an API key and no JWT secret (anonymous clients)."""
    process = start_server(config=config_file, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
def auth_server(config_file: Path) -> Iterator[ServerProcess]:
    """A server that requires HS256 JWTs signed with ``JWT_SECRET``."""
    process = start_server(
        config=config_file,
        env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": JWT_SECRET},
    )
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Like ``server``, shared by the tests of one module (each keeps to its own channels)."""
    config = tmp_path_factory.mktemp("node") / "tidings.toml"
    config.write_text(CONFIG)
    with serving(config) as process:
        yield process


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Like ``auth_server``, shared by the tests of one module (each keeps to its own users)."""
    config = tmp_path_factory.mktemp("auth_node") / "tidings.toml"
    config.write_text(CONFIG)
    with serving(config, {"TIDINGS_JWT_SECRET": JWT_SECRET}) as process:
        yield process


@contextmanager
def serving(
    config: Path, env: Mapping[str, str] | None = None, data: Path | None = None
) -> Iterator[ServerProcess]:
    """Run a server with the e2e configuration, the API key and ``env``; kill it on exit."""
    process = start_server(
        config=config, data=data, env={"TIDINGS_API_KEY": API_KEY, **(env or {})}
    )
    try:
        yield process
    finally:
        process.kill()


@asynccontextmanager
async def api_client(process: ServerProcess) -> AsyncIterator[ApiClient]:
    """The server API of ``process``, with the e2e key."""
    async with httpx.AsyncClient(base_url=process.http_url, timeout=30.0) as http:
        yield ApiClient(http, API_KEY)


def api_headers(key: str = API_KEY) -> dict[str, str]:
    """The ``Authorization`` header of a server API call."""
    return {"Authorization": f"Bearer {key}"}


def make_token(
    sub: str = "",
    *,
    expires_in_s: float = 3600.0,
    channels: list[str] | None = None,
    secret: str = JWT_SECRET,
) -> str:
    """Return an HS256 connection token (docs/protocol.md §8)."""
    claims: dict[str, object] = {"sub": sub, "exp": int(time.time() + expires_in_s)}
    if channels is not None:
        claims["channels"] = channels
    return jwt.encode(claims, secret, algorithm="HS256")


async def goodbye_of(client: WsClient) -> tuple[Frame, int | None]:
    """The next push (a closing server's ``disconnect``) and then the close code."""
    push = await client.next_push()
    return push, await client.wait_closed()


# -- a shared server for the HTTP transport tests (SSE, polling) ---------------------

ALLOWED_ORIGIN = "https://app.example.com"
HTTP_TIMEOUT = httpx.Timeout(10.0, read=40.0)


def unique(namespace: str = "room") -> str:
    """A channel no other test uses; ``namespace=""`` for the default namespace."""
    name = uuid.uuid4().hex[:12]
    return f"{namespace}:{name}" if namespace else name


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server, one per module, for the tests that neither stop nor reconfigure it."""
    config = tmp_path_factory.mktemp("shared") / "tidings.toml"
    config.write_text(CONFIG)
    process = start_server(
        config=config,
        env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_ALLOWED_ORIGINS": ALLOWED_ORIGIN},
    )
    try:
        yield process
    finally:
        process.kill()


@pytest.fixture
async def http(shared_server: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the module's shared server."""
    async with httpx.AsyncClient(base_url=shared_server.http_url, timeout=HTTP_TIMEOUT) as client:
        yield client


@pytest.fixture
def api(http: httpx.AsyncClient) -> ApiClient:
    """The server API of the module's shared server."""
    return ApiClient(http, API_KEY)
