"""Authentication, permissions and origins (docs/protocol.md §3, §8) against a server that
requires HS256 connection tokens, and one that accepts only anonymous connections."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import JWT_SECRET, goodbye_of, make_token, serving
from tests.support.server import ServerProcess
from tests.support.ws import Frame, ws_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_unauthorized_close(push: Frame, code: int | None, reason_part: str) -> None:
    assert (push["push"], push["code"], push["reconnect"]) == ("disconnect", 4001, False)
    assert reason_part in push["reason"]
    assert code == 4001


# -- three ways to present a token -----------------------------------------------------------


async def test_token_in_the_authorization_header_authenticates(
    auth_node: ServerProcess,
) -> None:
    async with ws_client(auth_node.ws_url, headers=bearer(make_token("alice"))) as client:
        connected = await client.result("connect")
        subscribed = await client.result("subscribe", channel="user:alice")
    assert connected["user"] == "alice"
    assert connected["version"] == "1"
    assert subscribed["offset"] == 0


async def test_token_in_the_query_string_authenticates(auth_node: ServerProcess) -> None:
    url = f"{auth_node.ws_url}?token={make_token('alice')}"
    async with ws_client(url) as client:
        connected = await client.result("connect")
        await client.result("subscribe", channel="user:alice")
    assert connected["user"] == "alice"


async def test_token_in_a_connect_command_authenticates(auth_node: ServerProcess) -> None:
    async with ws_client(auth_node.ws_url) as client:
        connected = await client.result("connect", token=make_token("alice"))
        await client.result("subscribe", channel="user:alice")
    assert connected["user"] == "alice"
    assert isinstance(connected["client"], str)
    assert connected["client"]


# -- refused tokens ---------------------------------------------------------------------------


async def test_expired_token_at_the_handshake_closes_with_4001(
    auth_node: ServerProcess,
) -> None:
    expired = make_token("alice", expires_in_s=-60)
    async with ws_client(auth_node.ws_url, headers=bearer(expired)) as client:
        push, code = await goodbye_of(client)
    assert_unauthorized_close(push, code, "expired")


async def test_expired_token_in_connect_is_unauthorized_then_closes_with_4001(
    auth_node: ServerProcess,
) -> None:
    async with ws_client(auth_node.ws_url) as client:
        reply = await client.request("connect", token=make_token("alice", expires_in_s=-60))
        push, code = await goodbye_of(client)
    assert reply["error"]["code"] == "unauthorized"
    assert "expired" in reply["error"]["message"]
    assert_unauthorized_close(push, code, "expired")


async def test_token_with_a_bad_signature_is_unauthorized(auth_node: ServerProcess) -> None:
    forged = make_token("alice", secret="not-the-servers-secret-but-long-enough-for-hs256")
    async with ws_client(auth_node.ws_url) as client:
        reply = await client.request("connect", token=forged)
        push, code = await goodbye_of(client)
    assert reply["error"]["code"] == "unauthorized"
    assert "invalid" in reply["error"]["message"]
    assert_unauthorized_close(push, code, "invalid")


# The e2e secret is shorter than PyJWT recommends for HS512: the warning is the point.
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
@pytest.mark.parametrize("algorithm", ["none", "HS512"])
async def test_token_signed_with_another_algorithm_is_unauthorized(
    auth_node: ServerProcess, algorithm: str
) -> None:
    claims = {"sub": "alice", "exp": int(time.time()) + 3600}
    token = jwt.encode(claims, "" if algorithm == "none" else JWT_SECRET, algorithm=algorithm)
    async with ws_client(auth_node.ws_url, headers=bearer(token)) as client:
        push, code = await goodbye_of(client)
    assert_unauthorized_close(push, code, "invalid")


async def test_garbage_token_in_the_query_string_closes_with_4001(
    auth_node: ServerProcess,
) -> None:
    async with ws_client(f"{auth_node.ws_url}?token=not.a.jwt") as client:
        push, code = await goodbye_of(client)
    assert_unauthorized_close(push, code, "invalid")


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        ("subscribe", {"channel": "room:1"}),
        ("publish", {"channel": "room:1", "data": 1}),
        ("history", {"channel": "room:1"}),
        ("presence", {"channel": "room:1"}),
        ("ping", {}),
    ],
)
async def test_command_before_connect_without_a_token_is_unauthorized_and_closes(
    auth_node: ServerProcess, op: str, fields: dict[str, Any]
) -> None:
    async with ws_client(auth_node.ws_url) as client:
        reply = await client.request(op, **fields)
        push, code = await goodbye_of(client)
    assert reply["error"]["code"] == "unauthorized"
    assert "connect" in reply["error"]["message"]
    assert_unauthorized_close(push, code, "connect")


async def test_connect_without_a_token_on_a_server_requiring_one_is_unauthorized(
    auth_node: ServerProcess,
) -> None:
    async with ws_client(auth_node.ws_url) as client:
        reply = await client.request("connect")
        push, code = await goodbye_of(client)
    assert reply["error"]["code"] == "unauthorized"
    assert_unauthorized_close(push, code, "token is required")


async def test_token_given_to_a_server_without_a_secret_is_unauthorized(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        reply = await client.request("connect", token=make_token("alice"))
        push, code = await goodbye_of(client)
    assert reply["error"]["code"] == "unauthorized"
    assert "anonymous" in reply["error"]["message"]
    assert_unauthorized_close(push, code, "anonymous")


async def test_token_header_on_a_server_without_a_secret_closes_with_4001(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url, headers=bearer(make_token("alice"))) as client:
        push, code = await goodbye_of(client)
    assert_unauthorized_close(push, code, "anonymous")


async def test_anonymous_connection_on_a_server_without_a_secret_needs_no_connect(
    node: ServerProcess,
) -> None:
    async with ws_client(node.ws_url) as client:
        subscribed = await client.result("subscribe", channel="room:1")
    async with ws_client(node.ws_url) as client:
        connected = await client.result("connect")
    assert subscribed["offset"] == 0
    assert connected["user"] == ""


# -- permissions --------------------------------------------------------------------------------


async def test_user_policy_allows_only_ones_own_user_channel(auth_node: ServerProcess) -> None:
    async with ws_client(auth_node.ws_url, headers=bearer(make_token("alice"))) as client:
        own = await client.request("subscribe", channel="user:alice")
        other = await client.request("subscribe", channel="user:bob")
        history = await client.request("history", channel="user:bob")
    assert "result" in own
    assert other["error"]["code"] == "permission_denied"
    assert "user:<your user id>" in other["error"]["message"]
    assert history["error"]["code"] == "permission_denied"


async def test_user_policy_refuses_a_verified_anonymous_token(auth_node: ServerProcess) -> None:
    async with ws_client(auth_node.ws_url, headers=bearer(make_token(""))) as client:
        empty = await client.request("subscribe", channel="user:")
        named = await client.request("subscribe", channel="user:alice")
    assert empty["error"]["code"] == "permission_denied"
    assert "anonymous" in empty["error"]["message"]
    assert named["error"]["code"] == "permission_denied"


async def test_token_channels_pattern_allows_matching_channels_of_a_token_namespace(
    auth_node: ServerProcess,
) -> None:
    token = make_token("alice", channels=["secret:*"])
    async with ws_client(auth_node.ws_url, headers=bearer(token)) as client:
        allowed = await client.request("subscribe", channel="secret:x")
    async with ws_client(auth_node.ws_url, headers=bearer(make_token("alice"))) as client:
        refused = await client.request("subscribe", channel="secret:x")
    assert "result" in allowed
    assert refused["error"]["code"] == "permission_denied"


async def test_token_channels_by_name_allow_only_the_names_listed(
    auth_node: ServerProcess,
) -> None:
    token = make_token("alice", channels=["secret:a"])
    async with ws_client(auth_node.ws_url, headers=bearer(token)) as client:
        listed = await client.request("subscribe", channel="secret:a")
        unlisted = await client.request("subscribe", channel="secret:b")
    assert "result" in listed
    assert unlisted["error"]["code"] == "permission_denied"


async def test_connect_after_a_subscribe_is_bad_request(auth_node: ServerProcess) -> None:
    async with ws_client(auth_node.ws_url, headers=bearer(make_token("alice"))) as client:
        await client.result("subscribe", channel="user:alice")
        reply = await client.request("connect", token=make_token("bob"))
        as_bob = await client.request("subscribe", channel="user:bob")
    assert reply["error"]["code"] == "bad_request"
    assert "before any subscribe" in reply["error"]["message"]
    assert as_bob["error"]["code"] == "permission_denied"  # still alice, still open


# -- origins ---------------------------------------------------------------------------------------


async def test_handshake_from_an_unlisted_origin_is_refused_with_403(
    node: ServerProcess,
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with ws_client(node.ws_url, origin="http://evil.example"):
            pass
    assert refused.value.response.status_code == 403


async def test_handshake_without_an_origin_is_accepted(node: ServerProcess) -> None:
    async with ws_client(node.ws_url) as client:
        assert await client.result("ping") == {}


async def test_handshake_from_the_same_origin_is_accepted(node: ServerProcess) -> None:
    async with ws_client(node.ws_url, origin=node.http_url) as client:
        assert await client.result("ping") == {}


async def test_listed_origin_is_accepted_and_others_still_refused(config_file: Path) -> None:
    env = {"TIDINGS_ALLOWED_ORIGINS": "https://app.example.com"}
    with serving(config_file, env) as server:
        async with ws_client(server.ws_url, origin="https://app.example.com") as client:
            assert await client.result("ping") == {}
        with pytest.raises(InvalidStatus) as refused:
            async with ws_client(server.ws_url, origin="http://evil.example"):
                pass
    assert refused.value.response.status_code == 403
