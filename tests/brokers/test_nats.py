"""What the NATS broker adds to the contract: many nodes publishing into one channel,
a node cut off and back (gap filled in order), NATS restarted (epochs and offsets kept),
the stream lost (a new epoch), presence that expires with its node, node commands, and
its settings.

Tests on the shared NATS use a prefix of their own (stream and bucket deleted after);
tests that stop or cut NATS run a ``nats-server`` of their own on a free port. Waiting
for an outage to be noticed is a bounded poll of ``is_ready``; deliveries are awaited.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nats
import pytest

from tests.support.clock import FakeClock
from tests.support.handler import RecordingCommands, RecordingHandler
from tests.support.nats_server import (
    NATS_HOST,
    NATS_PORT,
    SHARED_NATS_URL,
    NatsServer,
    delete_prefix,
)
from tests.support.services import require_service
from tests.support.shared_broker import (
    NAMESPACES,
    SMALL_HISTORY,
    data,
    eventually,
    is_not,
    offsets,
    stopped_after,
    unique_channel,
)
from tests.support.tcp_proxy import TcpProxy
from tidings.brokers.base import DisconnectUser, PublishResult
from tidings.brokers.factory import MissingExtra, check_broker, create_broker
from tidings.brokers.nats import NatsBroker, NatsTarget
from tidings.brokers.nats_keys import KeyIndex, KeyRecord
from tidings.brokers.nats_subjects import stream_name
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions
from tidings.core.publication import Position
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.errors import BrokerError, ConfigError


@asynccontextmanager
async def running(
    url: str,
    handler: RecordingHandler | None = None,
    *,
    presence_lifetime_s: float = 30.0,
    presence_refresh_s: float = 10.0,
) -> AsyncIterator[NatsBroker]:
    broker = NatsBroker(
        url,
        NAMESPACES,
        ping_interval_s=0.3,
        presence_lifetime_s=presence_lifetime_s,
        presence_refresh_s=presence_refresh_s,
    )
    await broker.start(handler or RecordingHandler())
    try:
        yield broker
    finally:
        await broker.close()


@pytest.fixture
async def shared_url() -> AsyncIterator[str]:
    """The shared NATS, under a prefix of this test's own (deleted after)."""
    require_service(NATS_HOST, NATS_PORT, "NATS")
    prefix = f"tidings-test-{secrets.token_hex(4)}"
    try:
        yield f"{SHARED_NATS_URL}?prefix={prefix}"
    finally:
        await delete_prefix(SHARED_NATS_URL, prefix)


@pytest.fixture
def dedicated(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own (JetStream on a file store)."""
    with stopped_after(NatsServer(tmp_path / "nats").start()) as server:
        yield server


# Many nodes on one NATS


async def test_three_nodes_publishing_concurrently_see_one_gap_free_order(
    shared_url: str,
) -> None:
    channel = unique_channel()
    handlers = [RecordingHandler() for _ in range(3)]
    async with (
        running(shared_url, handlers[0]) as node_1,
        running(shared_url, handlers[1]) as node_2,
        running(shared_url, handlers[2]) as node_3,
    ):
        nodes = (node_1, node_2, node_3)
        for node in nodes:
            await node.subscribe(channel)

        results = await asyncio.gather(
            *(node.publish(channel, data(n)) for n in range(60) for node in nodes)
        )

        seen = [await handler.wait_for(180) for handler in handlers]
        read = await node_1.history(channel)
    assert sorted(r.position.offset for r in results) == list(range(1, 181))
    assert offsets(seen[0]) == list(range(1, 181))
    assert seen[0] == seen[1] == seen[2]
    assert all(len(h.publications) == 180 for h in handlers)
    assert isinstance(read.recovery, Replay)
    assert {p.position: p.data for p in read.recovery.publications} == {
        p.position: p.data for p in seen[0]
    }


async def test_a_key_whose_node_died_after_publishing_is_found_not_published_twice(
    shared_url: str,
) -> None:
    channel, clock = unique_channel(), FakeClock()
    node = NatsBroker(shared_url, NAMESPACES, clock=clock, dedupe=DedupeOptions(600_000))
    await node.start(RecordingHandler())
    try:
        original = await node.publish(channel, data(1), key="k")
        await node.publish(channel, data(2))
        # As a node leaves it when it dies between storing and recording: claimed.
        admin = await nats.connect(SHARED_NATS_URL)
        try:
            keys = KeyIndex(NatsTarget.parse(shared_url).prefix, replicas=1, window_ms=600_000)
            await keys.start(admin)
            _, revision = await keys.read(channel, "k")
            claim = KeyRecord("claimed", clock.now_ms() - 1)
            assert await keys.write(channel, "k", claim, revision=revision) is not None
        finally:
            await admin.close()
        clock.advance(10_000)  # the claim is stale now, the key still within its window

        again = await node.publish(channel, data(3), key="k")
        read = await node.history(channel)
    finally:
        await node.close()
    assert again == PublishResult(original.position, duplicate=True)
    assert read.head.offset == 2


async def test_prefixes_do_not_hear_each_other(shared_url: str) -> None:
    channel = unique_channel()
    other_prefix = f"tidings-test-{secrets.token_hex(4)}"
    heard = RecordingHandler()
    try:
        async with (
            running(shared_url, heard) as node,
            running(f"{SHARED_NATS_URL}?prefix={other_prefix}") as other,
        ):
            await node.subscribe(channel)
            await other.publish(channel, data(1))
            await node.publish(channel, data(2))
            [publication] = await heard.wait_for(1)
    finally:
        await delete_prefix(SHARED_NATS_URL, other_prefix)
    assert publication.data == data(2)
    assert publication.offset == 1
    assert len(heard.publications) == 1


async def test_channel_names_nats_would_read_as_syntax_are_channels_like_any_other(
    shared_url: str,
) -> None:
    names = ["room:a.b", "room:*", "room:>", "room:a b", "room:ü=3A", "room:a=3A"]
    channels = [ChannelName(name) for name in names]
    heard = RecordingHandler()
    async with running(shared_url, heard) as node:
        for channel in channels:
            await node.subscribe(channel)
        for n, channel in enumerate(channels):
            await node.publish(channel, data(n))
        seen = await heard.wait_for(len(channels))
        reads = [await node.history(channel) for channel in channels]
    assert [(p.channel, p.offset, p.data) for p in seen] == [
        (channel, 1, data(n)) for n, channel in enumerate(channels)
    ]
    assert [r.head.offset for r in reads] == [1] * len(channels)


# A node cut off, NATS restarted, the stream lost


async def test_a_node_cut_off_is_not_ready_refuses_publishing_and_fills_the_gap_in_order(
    dedicated: NatsServer,
) -> None:
    channel, quiet_channel = unique_channel(), unique_channel()
    away = RecordingHandler()
    with TcpProxy(NATS_HOST, dedicated.port) as proxy:
        async with (
            running(f"nats://{NATS_HOST}:{proxy.port}", away) as node_a,
            running(dedicated.url) as node_b,
        ):
            await node_a.subscribe(channel)
            await node_a.subscribe(quiet_channel)
            for n in range(3):
                await node_b.publish(channel, data(n))
            await away.wait_for(3)

            proxy.stall()
            await eventually(lambda: is_not(node_a.is_ready()), "node A noticed the loss")
            for n in range(3, 10):
                await node_b.publish(channel, data(n))
            with pytest.raises(BrokerError):
                await node_a.publish(channel, data(99))
            with pytest.raises(BrokerError):
                await node_a.subscribe(unique_channel())
            proxy.resume()
            await eventually(node_a.is_ready, "node A reconnected")
            await node_b.publish(channel, data(10))
            await node_b.publish(quiet_channel, data(0))

            seen = await away.wait_for(12)
            read = await node_b.history(channel)
    by_channel = [p for p in seen if p.channel == channel]
    assert offsets(by_channel) == list(range(1, 12))
    assert [p.data for p in by_channel] == [data(n) for n in range(11)]
    assert [p.offset for p in seen if p.channel == quiet_channel] == [1]
    assert len(away.publications) == 12
    assert read.head.offset == 11  # the refused publish was not made


async def test_a_gap_longer_than_history_resumes_from_the_oldest_retained(
    dedicated: NatsServer,
) -> None:
    channel = unique_channel("small")
    away = RecordingHandler()
    with TcpProxy(NATS_HOST, dedicated.port) as proxy:
        async with (
            running(f"nats://{NATS_HOST}:{proxy.port}", away) as node_a,
            running(dedicated.url) as node_b,
        ):
            await node_a.subscribe(channel)
            await node_b.publish(channel, data(1))
            await away.wait_for(1)

            proxy.stall()
            await eventually(lambda: is_not(node_a.is_ready()), "node A noticed the loss")
            for n in range(2, 11):
                await node_b.publish(channel, data(n))
            proxy.resume()

            seen = await away.wait_for(1 + SMALL_HISTORY)
    assert offsets(seen) == [1, 8, 9, 10]


async def test_nats_restarted_keeps_epochs_and_offsets_and_nodes_resync(
    dedicated: NatsServer,
) -> None:
    channel = unique_channel()
    heard = RecordingHandler()
    async with running(dedicated.url, heard) as broker:
        await broker.subscribe(channel)
        first = [await broker.publish(channel, data(n)) for n in range(3)]
        assert await broker.is_ready()

        dedicated.stop()
        await eventually(lambda: is_not(broker.is_ready()), "the broker noticed NATS is down")
        with pytest.raises(BrokerError):
            await broker.publish(channel, data(99))
        dedicated.start()
        await eventually(broker.is_ready, "the broker reconnected")
        after = await broker.publish(channel, data(3))

        seen = await heard.wait_for(4)
    assert after.position == Position(first[0].position.epoch, 4)
    assert [p.data for p in seen] == [data(n) for n in range(4)]
    assert len(heard.publications) == 4


async def test_broker_started_while_nats_is_down_connects_once_it_is_up(
    tmp_path: Path,
) -> None:
    # Its port is chosen; nothing listens there yet.
    with stopped_after(NatsServer(tmp_path / "nats")) as server:
        async with running(server.url) as broker:
            ready_before = await broker.is_ready()
            server.start()
            await eventually(broker.is_ready, "the broker connected")
            await broker.subscribe(unique_channel())
    assert not ready_before


async def test_a_lost_stream_starts_a_new_epoch_and_readers_are_told_of_the_gap(
    dedicated: NatsServer,
) -> None:
    channel = unique_channel()
    heard = RecordingHandler()
    async with running(dedicated.url, heard) as broker:
        await broker.subscribe(channel)
        before = [await broker.publish(channel, data(n)) for n in range(3)]
        await heard.wait_for(3)
        admin = await nats.connect(dedicated.url)
        try:
            await admin.request(f"$JS.API.STREAM.DELETE.{stream_name('tidings')}", b"", timeout=5)
        finally:
            await admin.close()

        after = [await broker.publish(channel, data(n)) for n in range(3, 5)]
        read = await broker.history(channel, before[-1].position)
        seen = await heard.wait_for(5)
    old_epoch, new_epoch = before[0].position.epoch, after[0].position.epoch
    assert new_epoch != old_epoch
    assert [r.position for r in after] == [Position(new_epoch, 1), Position(new_epoch, 2)]
    assert read.recovery == Gap(GapReason.EPOCH_CHANGED)
    assert [p.position for p in seen[3:]] == [r.position for r in after]


# Presence


async def test_entries_of_a_stopped_node_expire_and_a_live_node_renews_its_own(
    shared_url: str,
) -> None:
    channel = unique_channel()
    lifetime_s, refresh_s = 1.0, 0.2
    async with running(
        shared_url, presence_lifetime_s=lifetime_s, presence_refresh_s=refresh_s
    ) as alive:
        async with running(
            shared_url, presence_lifetime_s=lifetime_s, presence_refresh_s=refresh_s
        ) as dead:
            await dead.presence_store.join(channel, "d.1", "dora")
            await alive.presence_store.join(channel, "l.1", "lena")
            both = await alive.presence_store.presence(channel)
        # ``dead`` stopped without leaving: no more renewals.

        async def expired() -> bool:
            return "d.1" not in await alive.presence_store.presence(channel)

        await eventually(expired, "the stopped node's entry expired")
        # Its last renewal was at least a lifetime ago; the live node's are newer.
        remaining = await alive.presence_store.presence(channel)
    assert both == {"d.1": "dora", "l.1": "lena"}
    assert remaining == {"l.1": "lena"}


# Node commands


async def test_a_node_command_reaches_every_node_once_the_sender_included(
    shared_url: str,
) -> None:
    commands = [RecordingCommands() for _ in range(3)]
    command = DisconnectUser("alice", 4003, "banned")
    async with (
        running(shared_url) as a,
        running(shared_url) as b,
        running(shared_url) as c,
    ):
        for node, recording in zip((a, b, c), commands, strict=True):
            node.listen(recording)

        told = await a.send_to_nodes(command)
        heard = [await recording.wait_for(1) for recording in commands]
        await a.send_to_nodes(DisconnectUser("bob", 4003, "marker"))
        for recording in commands:
            await recording.wait_for(2)  # anything repeated would have come before
        counted = [len(r.commands) for r in commands]
        await c.close()  # a node that leaves is no longer counted
        told_after = await a.send_to_nodes(DisconnectUser("carol", 4003, "counted"))
    assert heard == [[command]] * 3
    assert counted == [2, 2, 2]
    assert (told, told_after) == (3, 2)


# Settings


def test_url_and_file_settings_are_read_and_the_url_wins() -> None:
    target = NatsTarget.parse(
        "nats://u:p@127.0.0.1:4222,127.0.0.1:4223?prefix=app&replicas=3",
        {"prefix": "file", "storage": "memory"},
    )

    assert target.servers == ("nats://u:p@127.0.0.1:4222", "nats://u:p@127.0.0.1:4223")
    assert (target.prefix, target.replicas, target.storage) == ("app", 3, "memory")


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("nats://127.0.0.1:4222?prefx=a", None, "unknown setting 'prefx'"),
        ("nats://127.0.0.1:4222", {"replica": 3}, "unknown setting 'replica'"),
        ("nats://127.0.0.1:4222?prefix=a.b", None, "prefix must be"),
        ("nats://127.0.0.1:4222?replicas=9", None, "replicas must be 1 to 5"),
        ("nats://127.0.0.1:4222?storage=disk", None, "storage must be file or memory"),
    ],
)
def test_settings_the_broker_does_not_read_are_refused_in_one_line(
    url: str, options: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as error:
        NatsTarget.parse(url, options)
    assert "\n" not in str(error.value)


def test_the_factory_makes_the_nats_broker_with_its_table_of_the_file() -> None:
    broker = create_broker(
        "nats://127.0.0.1:4222",
        None,
        NAMESPACES,
        DedupeOptions(),
        options={"nats": {"prefix": "app"}},
    )
    assert isinstance(broker, NatsBroker)
    assert broker.presence_store is broker.presence_store


def test_a_presence_refresh_must_be_shorter_than_the_lifetime() -> None:
    with pytest.raises(ConfigError):
        NatsBroker(SHARED_NATS_URL, NAMESPACES, presence_lifetime_s=5, presence_refresh_s=5)


def test_a_node_without_the_nats_extra_is_told_the_pip_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As on a machine where nats-py was never installed: its import fails.
    for name in [n for n in sys.modules if n.startswith("tidings.brokers.nats")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [n for n in sys.modules if n == "nats" or n.startswith("nats.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "nats", None)
    with pytest.raises(MissingExtra) as error:
        check_broker("nats://127.0.0.1:4222", None)
    assert "pip install 'tidings[nats]'" in str(error.value)
