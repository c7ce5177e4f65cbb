"""Admission (transports/admission.py): one order of checks for every transport, and the
one translation of its refusals per transport kind, each refusal logged once."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable
from typing import Any

import pytest

from tests.support.placement import OWNER_URL, ElsewherePlacement
from tests.support.transport import memory_context
from tidings.core.channel import ChannelName
from tidings.core.permission import ANONYMOUS, Credentials
from tidings.errors import (
    BadRequest,
    ChannelMoved,
    OriginRefused,
    PermissionDenied,
    Unauthorized,
    Unavailable,
)
from tidings.hub.sessions import SessionRegistry
from tidings.transports.admission import Admission
from tidings.transports.close_codes import WebSocketClose
from tidings.transports.context import Limits, TransportContext
from tidings.transports.sse import SseTransport

OWNER = OWNER_URL
PEER = ("203.0.113.7", 50123)
ROOM = ChannelName("room:1")
DOC = ChannelName("doc:9")


class KeyFetchingAuthenticator:
    """Knows ``token``'s key only once ``pending_keys`` has been awaited (a JWKS
    rotation): ``authenticate`` refuses it before."""

    requires_token = True

    def __init__(self) -> None:
        self.fetched = False

    def authenticate(self, token: str | None) -> Credentials:
        if token != "t" or not self.fetched:
            raise Unauthorized("no key for this token")
        return Credentials(user="alice")

    def pending_keys(self, token: str | None) -> Awaitable[None] | None:
        return None if self.fetched else self._fetch()

    async def _fetch(self) -> None:
        self.fetched = True


@pytest.fixture
async def context() -> TransportContext:
    return await memory_context(
        Limits(max_channels_per_connection=2),
        allowed_origins=("https://app.example",),
        placement=ElsewherePlacement(DOC),
    )


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tidings.transports.refusals"]


def test_an_origin_not_allowed_is_refused_and_logged_once_as_an_origin(
    context: TransportContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.transports.refusals")
    admission = Admission(context)
    assert admission.check_origin("https://app.example", "node", "http").accepts_cookies
    with pytest.raises(OriginRefused) as refused:
        admission.check_origin("https://evil.example", "node", "http")
    status, _, body = admission.http_refusal(refused.value, PEER, "/poll?channel=a")
    assert status == 403
    assert json.loads(body)["error"]["message"] == "this origin is not in allowed_origins"
    assert refusal_lines(caplog) == [
        "refused an origin from 203.0.113.7:50123: https://evil.example is not in allowed_origins"
    ]
    assert context.refusals.counts["origin"] == 1
    assert context.refusals.counts["forbidden"] == 0


def test_a_request_is_checked_in_order_count_token_permission_placement_draining(
    context: TransportContext,
) -> None:
    admission = Admission(context)
    context.draining = True
    with pytest.raises(BadRequest, match="max_channels_per_connection allows 2"):
        admission.admit_request_now("poll", [ROOM, DOC, ChannelName("c")], "a token")
    with pytest.raises(Unauthorized):
        admission.admit_request_now("poll", [ROOM, ChannelName("user:bob")], "a token")
    with pytest.raises(PermissionDenied):
        admission.admit_request_now("poll", [DOC, ChannelName("user:bob")], None)
    with pytest.raises(ChannelMoved):
        admission.admit_request_now("poll", [ROOM, DOC], None)
    with pytest.raises(Unavailable, match="this node is draining; poll another"):
        admission.admit_request_now("poll", [ROOM], None)
    with pytest.raises(Unavailable, match="this node is draining; reconnect to another"):
        admission.admit_request_now("sse", [ROOM], None)
    context.draining = False
    assert admission.admit_request_now("poll", [ROOM], None) == ANONYMOUS


async def test_a_token_whose_key_is_not_fetched_yet_is_admitted_after_the_fetch(
    context: TransportContext,
) -> None:
    authenticator = KeyFetchingAuthenticator()
    context.authenticator = authenticator
    admission = Admission(context)
    with pytest.raises(Unauthorized):  # the native door does not wait: it falls back
        admission.admit_request_now("poll", [ROOM], "t")
    credentials = await admission.admit_request("poll", [ROOM], "t")
    assert credentials.user == "alice"
    assert authenticator.fetched


def test_a_moved_channel_is_a_307_to_the_same_request_on_its_owner_and_not_a_refusal(
    context: TransportContext,
) -> None:
    admission = Admission(context)
    error = ChannelMoved(DOC, OWNER)
    status, headers, body = admission.http_refusal(error, PEER, "/sse?channel=doc%3A9")
    assert status == 307
    assert headers["location"] == f"{OWNER}/sse?channel=doc%3A9"
    assert json.loads(body)["error"] == {
        "code": "moved",
        "message": f"channel doc:9 is served by another node: {OWNER}",
        "url": f"{OWNER}/sse?channel=doc%3A9",
    }
    reply = json.loads(admission.websocket_refusal(7, error, PEER))
    assert reply["error"]["url"] == "wss://node-b.example:8443/ws"
    assert admission.websocket_close(error, PEER) == WebSocketClose(
        4503, error.message, True, "wss://node-b.example:8443/ws"
    )
    assert sum(context.refusals.counts.values()) == 0


async def sse_answer(context: TransportContext, query: bytes) -> list[dict[str, Any]]:
    """What ``/sse?<query>`` sends when it is refused (it must not wait for the client)."""
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(dict(message))

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never leaves: the answer must not wait
        raise AssertionError

    scope = {
        "type": "http",
        "method": "GET",
        "scheme": "http",
        "path": "/sse",
        "query_string": query,
        "headers": [],
        "client": PEER,
    }
    async with asyncio.timeout(10):
        await SseTransport(context)(scope, receive, send)
    return sent


async def test_an_sse_request_for_a_moved_channel_is_answered_307_before_any_stream(
    context: TransportContext,
) -> None:
    sent = await sse_answer(context, b"channel=room:1&channel=doc:9")
    start = sent[0]
    assert start["status"] == 307
    assert (b"location", f"{OWNER}/sse?channel=room:1&channel=doc:9".encode()) in start["headers"]
    assert len(context.sessions) == 0


async def test_an_sse_stream_past_the_connection_limit_is_a_429_logged_once(
    context: TransportContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tidings.transports.refusals")
    context.sessions = SessionRegistry(0)
    sent = await sse_answer(context, b"channel=room:1")
    assert sent[0]["status"] == 429
    assert json.loads(sent[1]["body"])["error"]["code"] == "too_many_requests"
    assert context.refusals.counts["limit"] == 1
    assert len(refusal_lines(caplog)) == 1
