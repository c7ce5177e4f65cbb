"""The client renews expiring tokens through the application's callable (client/tokens.py,
#11.13): over WebSocket with ``refresh`` before ``exp``, over SSE and polling by
reconnecting with a fresh token once the server ends the stream at expiry. A fixed
token that expires stops the subscription with the server's reason.

Nothing waits on the clock: each test awaits the callable being called for a given
number of tokens (so at least that many lifetimes have passed), then a publication.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Final

import jwt
import pytest

from tests.client.conftest import (
    API_KEY,
    EVENT_TIMEOUT_S,
    POLL_INTERVAL_S,
    fast_backoff,
    write_config,
)
from tests.support.server import ServerProcess, start_server
from tidings.client import ApiClient, Subscription, TransportName
from tidings.client.tokens import Tokens, renew_in_s
from tidings.core.publication import Publication
from tidings.errors import ConnectionClosed

SECRET: Final = "client-tests-jwt-secret-long-enough-for-hs256"
LIFETIME_S: Final = 3.0


@pytest.fixture(scope="module")
def auth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server requiring HS256 tokens, shared by this module's tests (one user each)."""
    config = write_config(tmp_path_factory.mktemp("auth"))
    process = start_server(
        config=config, env={"TIDINGS_API_KEY": API_KEY, "TIDINGS_JWT_SECRET": SECRET}
    )
    try:
        yield process
    finally:
        process.kill()


def short_token(user: str) -> str:
    return jwt.encode(
        {"sub": user, "exp": int(time.time() + LIFETIME_S)}, SECRET, algorithm="HS256"
    )


class CountingTokens:
    """A token callable (sync or async) that counts its calls and wakes awaiters."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.calls = 0
        self._changed = asyncio.Event()

    def sync(self) -> str:
        self.calls += 1
        self._changed.set()
        return short_token(self.user)

    async def asynchronous(self) -> str:
        await asyncio.sleep(0)
        return self.sync()

    async def wait_calls(self, count: int) -> None:
        async with asyncio.timeout(EVENT_TIMEOUT_S * 2):
            while self.calls < count:
                self._changed.clear()
                await self._changed.wait()


async def next_publication(subscription: Subscription) -> Publication:
    async with asyncio.timeout(EVENT_TIMEOUT_S):
        event = await anext(subscription)
    assert isinstance(event, Publication), event
    return event


@pytest.mark.parametrize(
    ("transport", "kind"),
    [("ws", "sync"), ("ws", "async"), ("sse", "async"), ("longpoll", "sync"), ("poll", "async")],
)
async def test_a_token_callable_keeps_a_subscription_alive_across_expiries(
    auth_node: ServerProcess,
    transport: TransportName,
    kind: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = f"{transport}-{kind}"
    channel = f"user:{user}"
    tokens = CountingTokens(user)
    source: Callable[[], str | Awaitable[str]] = (
        tokens.sync if kind == "sync" else tokens.asynchronous
    )
    caplog.set_level(logging.INFO, logger="tidings.client")
    async with ApiClient(auth_node.http_url, API_KEY) as api:
        since = {channel: (await api.history(channel)).position}
        async with Subscription(
            auth_node.http_url,
            [channel],
            transport=transport,
            token=source,
            since=since,
            poll_interval_s=POLL_INTERVAL_S,
            backoff=fast_backoff(),
        ) as subscription:
            await api.publish(channel, {"n": 1})
            first = await next_publication(subscription)
            # A third token means the first two have expired or been replaced.
            await tokens.wait_calls(3)
            await api.publish(channel, {"n": 2})
            second = await next_publication(subscription)
    assert [first.offset, second.offset] == [since[channel].offset + 1, since[channel].offset + 2]
    if transport == "ws":  # renewed in place: the connection never ended
        assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]


async def test_a_fixed_token_that_expires_stops_the_subscription_saying_why(
    auth_node: ServerProcess,
) -> None:
    channel = "user:fixed"
    async with Subscription(
        auth_node.http_url,
        [channel],
        transport="ws",
        token=short_token("fixed"),
        backoff=fast_backoff(),
    ) as subscription:
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await anext(subscription)
    assert closed.value.code == 4001
    assert "expired" in closed.value.reason


async def test_tokens_call_a_sync_or_async_callable_and_refuse_a_non_string() -> None:
    async def make() -> str:
        return "async-token"

    assert await Tokens("fixed").fresh() == "fixed"
    assert await Tokens(None).fresh() is None
    assert await Tokens(lambda: "sync-token").fresh() == "sync-token"
    assert await Tokens(make).fresh() == "async-token"
    assert not Tokens("fixed").is_renewable
    assert Tokens(make).is_renewable
    with pytest.raises(TypeError, match="must return a str"):
        await Tokens(lambda: 5).fresh()  # type: ignore[arg-type]  # on purpose


# The same table as the JavaScript client's tests (clients/js/core.test.js).
RENEWAL_CASES: Final = json.loads(
    (Path(__file__).parents[2] / "clients" / "js" / "token_renewal_cases.json").read_text()
)["cases"]


@pytest.mark.parametrize(("left_s", "renew_s"), RENEWAL_CASES)
def test_a_token_is_renewed_a_quarter_of_its_time_before_expiry_within_bounds(
    left_s: float, renew_s: float
) -> None:
    assert renew_in_s(1000.0 + left_s, 1000.0) == pytest.approx(renew_s)
