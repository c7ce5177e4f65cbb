"""Connection tokens expire on live connections (#11.13, docs/protocol.md §8): a WebSocket is
told ``disconnect`` 4001 "token expired" (reconnect: true) and closed unless it sent a
``refresh`` first; an SSE stream ends with ``event: disconnect``; a long poll is answered
at its token's expiry and the next poll is refused. Tokens without ``exp`` are refused.

Nothing here measures time: each test awaits the server's own message. Where a refresh
must have moved the expiry, the close is checked to come no earlier than the new
``exp`` (a deadline never fires early), which the old one would have broken.
"""

from __future__ import annotations

import time
from typing import Final

import httpx
import jwt

from tests.e2e.conftest import JWT_SECRET, goodbye_of, make_token
from tests.support.server import ServerProcess
from tests.support.sse import sse_stream
from tests.support.ws import ws_client

SHORT_S: Final = 3.0  # long enough to connect and subscribe on a loaded machine
WAIT_S: Final = 15.0


def short_token(user: str = "alice", expires_in_s: float = SHORT_S) -> tuple[str, int]:
    """A token expiring soon, and its ``exp``."""
    token = make_token(user, expires_in_s=expires_in_s)
    exp = jwt.decode(token, JWT_SECRET, algorithms=["HS256"])["exp"]
    assert isinstance(exp, int)
    return token, exp


async def test_a_websocket_is_closed_with_4001_when_its_token_expires(
    auth_node: ServerProcess,
) -> None:
    token, exp = short_token()
    async with ws_client(f"{auth_node.ws_url}?token={token}") as client:
        connected = await client.result("connect")
        await client.result("subscribe", channel="user:alice")
        push, code = await goodbye_of(client)
    assert connected["expires"] == exp
    assert push == {
        "push": "disconnect",
        "code": 4001,
        "reason": "token expired",
        "reconnect": True,
    }
    assert code == 4001


async def test_a_refresh_moves_the_expiry_to_the_new_tokens(auth_node: ServerProcess) -> None:
    token, _ = short_token()
    fresh, fresh_exp = short_token(expires_in_s=SHORT_S + 2)
    async with ws_client(f"{auth_node.ws_url}?token={token}") as client:
        refreshed = await client.result("refresh", token=fresh)
        push, code = await client.next_push(WAIT_S), await client.wait_closed(WAIT_S)
        closed_at = time.time()
    assert refreshed == {"expires": fresh_exp}
    assert (push["code"], push["reason"], code) == (4001, "token expired", 4001)
    # The old token's deadline would have closed it at least two seconds earlier.
    assert closed_at >= fresh_exp


async def test_a_refresh_keeps_subscriptions_and_takes_a_longer_token(
    auth_node: ServerProcess,
) -> None:
    async with (
        ws_client(f"{auth_node.ws_url}?token={make_token('carol', expires_in_s=60)}") as client,
        httpx.AsyncClient(base_url=auth_node.http_url) as http,
    ):
        await client.result("subscribe", channel="user:carol")
        refreshed = await client.result("refresh", token=make_token("carol"))
        response = await http.post(
            "/api/publish",
            json={"channel": "user:carol", "data": {"n": 1}},
            headers={"Authorization": "Bearer e2e-api-key"},
        )
        assert response.status_code == 200
        [publication] = await client.publications(1)
    assert refreshed["expires"] > time.time() + 600
    assert publication["data"] == {"n": 1}


async def test_a_refresh_naming_another_user_is_refused_and_the_connection_stays(
    auth_node: ServerProcess,
) -> None:
    async with ws_client(f"{auth_node.ws_url}?token={make_token('alice')}") as client:
        wrong_user = await client.request("refresh", token=make_token("mallory"))
        bad_token = await client.request("refresh", token="not.a.jwt")
        no_exp = await client.request(
            "refresh", token=jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256")
        )
        still = await client.result("connect")
    assert wrong_user["error"]["code"] == "permission_denied"
    assert "'alice', not 'mallory'" in wrong_user["error"]["message"]
    assert bad_token["error"]["code"] == "unauthorized"
    assert no_exp["error"]["code"] == "unauthorized"
    assert "no exp claim" in no_exp["error"]["message"]
    assert still["user"] == "alice"


async def test_a_refresh_before_connecting_closes_like_any_command(
    auth_node: ServerProcess,
) -> None:
    async with ws_client(auth_node.ws_url) as client:
        reply = await client.request("refresh", token=make_token("alice"))
        code = await client.wait_closed()
    assert reply["error"]["code"] == "unauthorized"
    assert code == 4001


async def test_a_token_without_exp_is_refused_saying_why(auth_node: ServerProcess) -> None:
    token = jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256")
    async with ws_client(f"{auth_node.ws_url}?token={token}") as client:
        push, code = await goodbye_of(client)
    assert (push["code"], push["reconnect"], code) == (4001, False, 4001)
    assert "no exp claim" in push["reason"]


async def test_an_sse_stream_ends_with_a_disconnect_event_when_its_token_expires(
    auth_node: ServerProcess,
) -> None:
    token, _ = short_token("dave")
    async with (
        httpx.AsyncClient(base_url=auth_node.http_url, timeout=WAIT_S) as http,
        sse_stream(http, {"channel": "user:dave", "token": token}) as stream,
    ):
        subscribed = await stream.next_event()
        goodbye = await stream.next_event(WAIT_S)
    assert subscribed.type == "subscribed"
    assert goodbye.type == "disconnect"
    assert goodbye.json() == {"code": 4001, "reason": "token expired", "reconnect": True}


async def test_a_long_poll_is_answered_at_its_tokens_expiry_and_the_next_refused(
    auth_node: ServerProcess,
) -> None:
    token, _ = short_token("erin")
    # The poll asks to wait 60 s; the client gives up long before: only the token's
    # expiry can answer it in time.
    async with httpx.AsyncClient(base_url=auth_node.http_url, timeout=WAIT_S) as http:
        first = await http.get("/poll", params={"channel": "user:erin", "token": token})
        assert first.status_code == 200, first.text
        params = {"channel": "user:erin", "cursor": first.json()["cursor"], "token": token}
        held = await http.get("/poll", params={**params, "wait": "60"})
        after = await http.get("/poll", params=params)
    assert held.status_code == 200
    assert held.json()["publications"] == []
    assert after.status_code == 401
    assert "expired" in after.json()["error"]["message"]
