"""Readiness that tells the truth (issue #12.3): a node on a Redis that stops answering
(the process SIGSTOPped, or its link silently black-holed by the tests' own TCP proxy)
says so on ``/ready`` (503) and answers publishes ``unavailable`` instead of hanging;
once Redis answers again it is ready again.

Publications answered 503 are counted after Redis resumes: one that appears in history
anyway must have been answered "may have been published" (the node sent it and got no
answer); one answered "not published" must never appear.

Each test runs its own ``redis-server`` on a free port (never the machine's own) and a
real ``tidings serve`` on it. Waiting for the node to notice is a bounded poll of
``/ready``; nothing here asserts how long anything took.
"""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx
import pytest

from tests.chaos.conftest import API_KEY
from tests.support.handler import RecordingHandler
from tests.support.redis_cluster import RedisServer
from tests.support.server import ServerProcess, start_server
from tests.support.tcp_proxy import TcpProxy
from tidings.brokers.redis import RedisBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces, default_namespaces
from tidings.core.recovery import Replay
from tidings.errors import BrokerError, BrokerUnavailable

pytestmark = pytest.mark.chaos

HEADERS: Final = {"Authorization": f"Bearer {API_KEY}"}
# Each /ready answers within about a second and a half (READY_TIMEOUT_S): this bounds
# how many looks the node gets to notice, not how fast it must be.
READY_POLLS: Final = 20
READY_POLL_GAP_S: Final = 0.1
IN_FLIGHT: Final = 20  # publishes sent just as Redis stops answering
AFTERWARDS: Final = 20  # publishes sent once /ready said 503
# Large enough that a publish hanging as before the fix (5 s) still gets its answer.
HTTP_TIMEOUT: Final = httpx.Timeout(30.0)
MAY_HAVE_BEEN: Final = "may have been published; retry with the same key"
NAMESPACES: Final = Namespaces(default_namespaces())


@dataclass(frozen=True)
class Answer:
    """What the node answered one publish."""

    n: int
    status: int
    body: dict[str, Any]

    @property
    def message(self) -> str:
        return str(self.body.get("error", {}).get("message", ""))


@contextmanager
def node_on(broker_url: str) -> Iterator[ServerProcess]:
    process = start_server("--broker", broker_url, env={"TIDINGS_API_KEY": API_KEY})
    try:
        yield process
    finally:
        process.kill()


@asynccontextmanager
async def http_of(node: ServerProcess) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=node.http_url, timeout=HTTP_TIMEOUT) as client:
        yield client


async def ready_becomes(http: httpx.AsyncClient, status: int) -> list[int]:
    """Poll ``/ready`` until it answers ``status`` (at most ``READY_POLLS`` looks);
    return what it answered on the way."""
    seen = []
    for _ in range(READY_POLLS):
        seen.append((await http.get("/ready")).status_code)
        if seen[-1] == status:
            return seen
        await asyncio.sleep(READY_POLL_GAP_S)
    pytest.fail(f"/ready never answered {status} in {READY_POLLS} looks: {seen}")


async def publish(http: httpx.AsyncClient, channel: str, n: int) -> Answer:
    body = {"channel": channel, "data": {"n": n}, "key": f"k{n}"}
    response = await http.post("/api/publish", json=body, headers=HEADERS)
    return Answer(n, response.status_code, response.json())


async def published_numbers(http: httpx.AsyncClient, channel: str) -> set[int]:
    response = await http.get(
        "/api/history", params={"channel": channel, "limit": 1000}, headers=HEADERS
    )
    assert response.status_code == 200, response.text
    return {publication["data"]["n"] for publication in response.json()["publications"]}


async def stall_and_count(
    http: httpx.AsyncClient, stall: Callable[[], None], resume: Callable[[], None]
) -> tuple[list[Answer], set[int]]:
    """Publish through a stall of Redis; return every answer and what history holds."""
    channel = f"room:{uuid.uuid4().hex[:12]}"
    # Concurrent publishes leave the node with several connections to Redis, so the
    # ones in flight at the stall find one free and are sent (and go unanswered).
    warm = await asyncio.gather(*(publish(http, channel, -n) for n in range(1, IN_FLIGHT + 1)))
    assert {a.status for a in warm} == {200}
    stall()
    try:
        # Some publishes leave just as Redis stops answering, more once /ready said so.
        in_flight = [
            asyncio.create_task(publish(http, channel, n)) for n in range(1, IN_FLIGHT + 1)
        ]
        looks = await ready_becomes(http, 503)
        print(f"/ready answered 503 at look {len(looks)}")
        afterwards = await asyncio.gather(
            *(publish(http, channel, n) for n in range(IN_FLIGHT + 1, IN_FLIGHT + AFTERWARDS + 1))
        )
        answers = [*await asyncio.gather(*in_flight), *afterwards]
    finally:
        resume()
    await ready_becomes(http, 200)
    assert (await publish(http, channel, 10_000)).status == 200
    return answers, await published_numbers(http, channel)


def assert_told_the_truth(answers: list[Answer], present: set[int]) -> None:
    assert [a for a in answers if a.status != 503] == []
    assert {a.body["error"]["code"] for a in answers} == {"unavailable"}
    made_anyway = [a for a in answers if a.n in present]
    # Each 503'd publication that was made after all was answered "may have been".
    assert [a for a in made_anyway if MAY_HAVE_BEEN not in a.message] == []
    # Those refused once /ready said 503 were never sent: "not published", and absent.
    refused = [a for a in answers if a.n > IN_FLIGHT]
    assert [a for a in refused if "not published" not in a.message] == []
    assert present.isdisjoint(a.n for a in refused)
    print(  # the figure for docs/server.md: how many 503s were made after all
        f"{len(answers)} answered 503, {len(made_anyway)} made after Redis resumed, "
        f"{sum(MAY_HAVE_BEEN in a.message for a in answers)} said 'may have been published'"
    )


@pytest.mark.e2e
async def test_a_stopped_redis_makes_ready_503_and_publishes_fail_fast(
    redis: RedisServer,
) -> None:
    assert redis.process is not None
    pid = redis.process.pid
    with node_on(redis.url) as node:
        async with http_of(node) as http:
            await ready_becomes(http, 200)
            answers, present = await stall_and_count(
                http,
                lambda: os.kill(pid, signal.SIGSTOP),
                lambda: os.kill(pid, signal.SIGCONT),
            )
    assert_told_the_truth(answers, present)


@pytest.mark.e2e
async def test_a_black_holed_link_makes_ready_503_and_publishes_fail_fast(
    redis: RedisServer,
) -> None:
    with TcpProxy("127.0.0.1", redis.port) as proxy, node_on(proxy.url) as node:
        async with http_of(node) as http:
            await ready_becomes(http, 200)
            answers, present = await stall_and_count(http, proxy.stall, proxy.resume)
    assert_told_the_truth(answers, present)


# -- the broker alone: what a publish to a stopped Redis answers, and what it leaves ----


@asynccontextmanager
async def broker_on(url: str) -> AsyncIterator[RedisBroker]:
    # No periodic probe: each test decides when the broker learns Redis stopped.
    broker = RedisBroker(url, NAMESPACES, publish_timeout_s=0.5, probe_interval_s=3600.0)
    await broker.start(RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


async def test_a_publish_sent_to_a_stopped_redis_may_have_been_made_and_is_on_resume(
    redis: RedisServer,
) -> None:
    assert redis.process is not None
    channel = ChannelName(f"room:{uuid.uuid4().hex[:12]}")
    async with broker_on(redis.url) as broker:
        await broker.publish(channel, b'{"n":1}')  # leaves one connection in the pool
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerError, match=MAY_HAVE_BEEN) as failed:
                await broker.publish(channel, b'{"n":2}', key="k2")
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        retried = await broker.publish(channel, b'{"n":2}', key="k2")
        read = await broker.history(channel)
    assert not isinstance(failed.value, BrokerUnavailable)
    # Redis ran it once it read it: the retry with the same key found it.
    assert retried.duplicate
    assert isinstance(read.recovery, Replay)
    assert [p.offset for p in read.recovery.publications] == [1, 2]


async def test_a_publish_that_never_left_is_never_made(redis: RedisServer) -> None:
    assert redis.process is not None
    channel = ChannelName(f"room:{uuid.uuid4().hex[:12]}")
    async with broker_on(redis.url) as broker:
        # No command connection yet: the publish waits for one that cannot be set up.
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerUnavailable, match="not sent"):
                await broker.publish(channel, b'{"n":1}')
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        after = await broker.publish(channel, b'{"n":2}')
        read = await broker.history(channel)
    assert after.position.offset == 1
    assert isinstance(read.recovery, Replay)
    assert [p.data for p in read.recovery.publications] == [b'{"n":2}']


async def test_once_the_probe_finds_redis_silent_publishes_fail_at_once_unsent(
    redis: RedisServer,
) -> None:
    assert redis.process is not None
    channel = ChannelName(f"room:{uuid.uuid4().hex[:12]}")
    async with broker_on(redis.url) as broker:
        assert await broker.is_ready()
        os.kill(redis.process.pid, signal.SIGSTOP)
        try:
            ready_while_stopped = await broker.is_ready()
            with pytest.raises(BrokerUnavailable, match="nothing was sent"):
                await broker.publish(channel, b'{"n":1}')
        finally:
            os.kill(redis.process.pid, signal.SIGCONT)
        ready_again = await broker.is_ready()
        after = await broker.publish(channel, b'{"n":2}')
    assert (ready_while_stopped, ready_again, after.position.offset) == (False, True, 1)
