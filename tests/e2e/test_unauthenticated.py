"""WebSockets that have not authenticated on a node that requires tokens (issue #11.7):
they must send ``connect`` within ``connect_timeout`` (else 4001, with a disconnect push
saying why), and they hold slots of a small allowance of their own
(``max_unauthenticated_connections``, past it 4501), so they can never take every slot
of ``max_connections`` from users who have a token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import CONFIG, JWT_SECRET, goodbye_of, make_token, serving
from tests.support.server import ServerProcess
from tests.support.ws import WsClient, ws_client

ALLOWANCE = 2


@pytest.fixture
def strict_node(tmp_path: Path) -> Iterator[ServerProcess]:
    """A node requiring tokens, with a short connect deadline and an allowance of 2."""
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    env = {
        "TIDINGS_JWT_SECRET": JWT_SECRET,
        "TIDINGS_CONNECT_TIMEOUT": "1s",
        "TIDINGS_MAX_UNAUTHENTICATED_CONNECTIONS": str(ALLOWANCE),
    }
    with serving(config, env) as process:
        yield process


@pytest.fixture
def patient_node(tmp_path: Path) -> Iterator[ServerProcess]:
    """Like ``strict_node``, but with a connect deadline no test waits for."""
    config = tmp_path / "tidings.toml"
    config.write_text(CONFIG)
    env = {
        "TIDINGS_JWT_SECRET": JWT_SECRET,
        "TIDINGS_CONNECT_TIMEOUT": "10m",
        "TIDINGS_MAX_UNAUTHENTICATED_CONNECTIONS": str(ALLOWANCE),
    }
    with serving(config, env) as process:
        yield process


async def _registered(client: WsClient) -> None:
    """Return once the node has registered the session: it answers a bad command (a bad
    command is answered without authentication, and without closing)."""
    reply = await client.request("nope")
    assert reply["error"]["code"] == "bad_request"


async def test_a_socket_that_never_sends_connect_is_closed_4001_after_the_deadline(
    strict_node: ServerProcess,
) -> None:
    async with ws_client(strict_node.ws_url) as silent:
        push, code = await goodbye_of(silent)
    assert push == {
        "push": "disconnect",
        "code": 4001,
        "reason": "no connect command with a token within 1 s",
        "reconnect": False,
    }
    assert code == 4001


async def test_a_socket_that_connects_in_time_stays_past_the_deadline(
    strict_node: ServerProcess,
) -> None:
    async with ws_client(strict_node.ws_url) as prompt:
        connected = await prompt.result("connect", token=make_token("ann"))
        assert connected["user"] == "ann"
        # Opened later, this one's deadline falls no earlier than the first one's.
        async with ws_client(strict_node.ws_url) as late:
            await goodbye_of(late)
        assert await prompt.result("subscribe", channel="user:ann")  # still served


async def test_past_the_allowance_an_unauthenticated_socket_is_refused_4501_not_a_token_holder(
    patient_node: ServerProcess,
) -> None:
    url = patient_node.ws_url
    async with ws_client(url) as first, ws_client(url) as second:
        await _registered(first)
        await _registered(second)
        async with ws_client(url) as third:
            push, code = await goodbye_of(third)
        assert (push["push"], push["code"], push["reconnect"]) == ("disconnect", 4501, True)
        assert "not authenticated" in push["reason"]
        assert code == 4501
        async with ws_client(f"{url}?token={make_token('bob')}") as holder:
            assert (await holder.result("connect"))["user"] == "bob"
        # One that authenticates leaves the allowance: another may take its place.
        await first.result("connect", token=make_token("ann"))
        async with ws_client(url) as fourth:
            await _registered(fourth)
