"""RS256 and ES256 tokens on a real node (docs/protocol.md §8): a PEM public key file
(``jwt_public_key``), and a JWKS URL (``jwt_jwks_url``) served by the test, fetched by
the node at start, the key chosen by ``kid``. HS256 tokens are refused where no secret
is configured; a short ``jwt_secret`` stops the node at start with one line."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import goodbye_of, make_token, serving
from tests.support.jwks import KeySetServer, ec_key, pem_file, rsa_key, signed
from tests.support.ws import ws_client


@pytest.fixture
def key_set() -> Iterator[KeySetServer]:
    server = KeySetServer()
    try:
        yield server
    finally:
        server.close()


async def test_a_node_with_a_pem_public_key_accepts_rs256_tokens(
    config_file: Path, tmp_path: Path
) -> None:
    private = rsa_key()
    env = {"TIDINGS_JWT_PUBLIC_KEY": str(pem_file(tmp_path, private.public_key()))}
    with serving(config_file, env) as node:
        url = f"{node.ws_url}?token={signed(private, 'RS256')}"
        async with ws_client(url) as client:
            connected = await client.result("connect")
            await client.result("subscribe", channel="user:alice")
        async with ws_client(f"{node.ws_url}?token={make_token('alice')}") as refused:
            push, code = await goodbye_of(refused)
    assert connected["user"] == "alice"
    assert (push["code"], code) == (4001, 4001)
    assert "accepts RS256" in push["reason"]


async def test_a_node_with_a_jwks_url_accepts_tokens_of_each_key_by_kid(
    config_file: Path, key_set: KeySetServer
) -> None:
    rsa_private, ec_private = rsa_key(), ec_key()
    key_set.publish(("r1", rsa_private), ("e1", ec_private))
    with serving(config_file, {"TIDINGS_JWT_JWKS_URL": key_set.url}) as node:
        users = []
        for token in (
            signed(rsa_private, "RS256", "r1"),
            signed(ec_private, "ES256", "e1", sub="bob"),
        ):
            async with ws_client(f"{node.ws_url}?token={token}") as client:
                users.append((await client.result("connect"))["user"])
    assert users == ["alice", "bob"]


def test_a_short_jwt_secret_stops_the_node_at_start_with_one_line(config_file: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--config", str(config_file)],
        env={"TIDINGS_JWT_SECRET": "too-short", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert lines == [
        "Error: jwt_secret is 9 bytes; HS256 needs at least 32 (RFC 7518 §3.2); make one "
        "with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    ]
