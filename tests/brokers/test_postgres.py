"""The PostgreSQL broker beyond the contract suite: its schema's migrations, NOTIFY's
size limit, a lost listening connection, the trim, and PostgreSQL going away.

Against the machine's PostgreSQL (a schema per test, dropped at exit), and, for the
test that stops the server, a cluster of the test's own.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from tests.support.clock import FakeClock
from tests.support.handler import RecordingCommands, RecordingHandler
from tests.support.postgres import (
    POSTGRES_URL,
    LocalPostgres,
    drop_schema,
    require_postgres,
    unique_schema,
)
from tidings.brokers.base import DisconnectUser
from tidings.brokers.postgres import PostgresBroker, SchemaTooNew
from tidings.brokers.postgres_rows import NOTICE_LIMIT
from tidings.brokers.postgres_schema import SCHEMA_VERSION, migrate
from tidings.brokers.postgres_trim import trim
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.dedupe import DedupeOptions
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import Position
from tidings.core.recovery import Replay
from tidings.errors import BrokerError

HOUR_MS = 3_600_000
NAMESPACES = Namespaces(
    {
        NamespaceName("room"): NamespaceOptions(history=HistoryOptions(1_000, HOUR_MS)),
        NamespaceName("small"): NamespaceOptions(history=HistoryOptions(3, HOUR_MS)),
        NamespaceName("brief"): NamespaceOptions(history=HistoryOptions(100, 1_000)),
    }
)
DEADLINE_S = 15.0

BrokerMaker = Callable[..., PostgresBroker]


@pytest.fixture
def schema() -> Iterator[str]:
    require_postgres()
    name = unique_schema()
    yield name
    drop_schema(name)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def make_broker(schema: str, clock: FakeClock) -> AsyncIterator[BrokerMaker]:
    """Make (not start) brokers on the test's schema; close them all at the end."""
    made: list[PostgresBroker] = []

    def make(url: str = POSTGRES_URL, **query: str) -> PostgresBroker:
        options = {"schema": schema, **query}
        broker = PostgresBroker(url, NAMESPACES, clock=clock, options=options)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


def channel(namespace: str = "room") -> ChannelName:
    return ChannelName(f"{namespace}:{secrets.token_hex(6)}")


def data(n: int) -> bytes:
    return b'{"n":%d}' % n


async def until(condition: Callable[[], object], what: str) -> None:
    """Await ``condition()`` (sync or async) becoming true, within a deadline."""
    async with asyncio.timeout(DEADLINE_S):
        while True:
            result = condition()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.02)  # a bounded poll of an observable condition


async def is_not_ready(broker: PostgresBroker) -> bool:
    return not await broker.is_ready()


# -- the schema ----------------------------------------------------------------------------


async def test_an_old_schema_is_upgraded_in_place_and_keeps_its_publications(
    schema: str, make_broker: BrokerMaker
) -> None:
    old = channel()
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await migrate(conn, schema, up_to=1)  # as the first release left it
        await conn.execute(
            sql.SQL("INSERT INTO {}.channels VALUES (%s, 'room', 'old-epoch', 2, 0)").format(
                sql.Identifier(schema)
            ),
            [old],
        )
        for offset in (1, 2):
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {}.publications VALUES (%s, %s, %s, %s, NULL, NULL, NULL)"
                ).format(sql.Identifier(schema)),
                [old, offset, FakeClock().now_ms(), data(offset)],
            )
    broker = make_broker()

    await broker.start(RecordingHandler())
    read = await broker.history(old, Position("old-epoch", 0))
    published = await broker.publish(old, data(3))

    assert isinstance(read.recovery, Replay)
    assert [p.data for p in read.recovery.publications] == [data(1), data(2)]
    assert published.position == Position("old-epoch", 3)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        cursor = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_version").format(sql.Identifier(schema))
        )
        assert await cursor.fetchone() == (SCHEMA_VERSION,)


async def test_a_schema_newer_than_this_tidings_is_refused_with_one_line(
    schema: str, make_broker: BrokerMaker
) -> None:
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await migrate(conn, schema)
        await conn.execute(
            sql.SQL("UPDATE {}.schema_version SET version = %s").format(sql.Identifier(schema)),
            [SCHEMA_VERSION + 1],
        )
    broker = make_broker()

    with pytest.raises(SchemaTooNew) as refused:
        await broker.start(RecordingHandler())

    assert str(refused.value) == (
        f"PostgreSQL schema {schema!r} is at version {SCHEMA_VERSION + 1}, newer than this "
        f"tidings knows ({SCHEMA_VERSION}): upgrade tidings on this node"
    )
    assert not await broker.is_ready()


async def test_nodes_starting_at_once_on_a_new_schema_both_serve_one_sequence(
    make_broker: BrokerMaker,
) -> None:
    first, second = make_broker(), make_broker()
    shared = channel()

    await asyncio.gather(first.start(RecordingHandler()), second.start(RecordingHandler()))
    results = await asyncio.gather(
        *(node.publish(shared, data(n)) for n in range(20) for node in (first, second))
    )

    assert sorted(r.position.offset for r in results) == list(range(1, 41))


async def test_nodes_publishing_at_once_into_many_channels_never_deadlock_nor_skip(
    make_broker: BrokerMaker,
) -> None:
    # Each node sends waiting publishes in batches, one transaction each: batches lock
    # channel rows in one order, so two nodes' batches never wait on each other in a cycle.
    first, second = make_broker(), make_broker()
    await first.start(RecordingHandler())
    await second.start(RecordingHandler())
    names = [channel() for _ in range(8)]

    results = await asyncio.gather(
        *(
            node.publish(names[(n * 7 + i) % len(names)], data(n))
            for n in range(150)
            for i, node in enumerate((first, second))
        )
    )

    by_channel: dict[str, list[int]] = {}
    for n, result in enumerate(results):
        name = names[((n // 2) * 7 + n % 2) % len(names)]
        by_channel.setdefault(name, []).append(result.position.offset)
    assert all(
        sorted(offsets) == list(range(1, len(offsets) + 1)) for offsets in by_channel.values()
    )
    assert sum(len(offsets) for offsets in by_channel.values()) == 300


async def test_nodes_reading_a_new_channel_at_once_are_given_one_epoch(
    make_broker: BrokerMaker,
) -> None:
    first, second = make_broker(), make_broker()
    await first.start(RecordingHandler())
    await second.start(RecordingHandler())
    fresh = [channel() for _ in range(30)]

    reads = await asyncio.gather(
        *(node.history(name) for name in fresh for node in (first, second, first, second))
    )
    published = [await first.publish(name, data(1)) for name in fresh]

    heads = [reads[i : i + 4] for i in range(0, len(reads), 4)]
    for name_reads, result in zip(heads, published, strict=True):
        assert {read.head for read in name_reads} == {Position(result.position.epoch, 0)}


# -- delivery ------------------------------------------------------------------------------


@pytest.mark.parametrize("notify", ["true", "false"])
async def test_a_publication_too_large_for_notify_is_delivered_whole(
    make_broker: BrokerMaker, notify: str
) -> None:
    subscriber, publisher = make_broker(notify=notify, poll_interval="0.05"), make_broker()
    handler = RecordingHandler()
    await subscriber.start(handler)
    await publisher.start(RecordingHandler())
    big = channel()
    await subscriber.subscribe(big)
    large = b'{"text":"' + b"x" * (NOTICE_LIMIT * 2) + b'"}'

    await publisher.publish(big, data(1))
    await publisher.publish(big, large)
    await publisher.publish(big, data(3))

    delivered = await handler.wait_for(3)
    assert [p.data for p in delivered] == [data(1), large, data(3)]
    assert [p.offset for p in delivered] == [1, 2, 3]


@pytest.fixture
def listener_role() -> Iterator[str]:
    """A login role of the test's own, whose logins the test can refuse for a while."""
    require_postgres()
    role = f"tidings_test_{secrets.token_hex(4)}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_a_node_delivers_what_was_published_while_it_was_not_listening(
    make_broker: BrokerMaker, listener_role: str
) -> None:
    role = sql.Identifier(listener_role)
    subscriber = make_broker(POSTGRES_URL.replace("postgres@", f"{listener_role}@"))
    publisher = make_broker()
    handler = RecordingHandler()
    await publisher.start(RecordingHandler())  # it makes the schema: the role owns nothing
    await subscriber.start(handler)
    followed = channel()
    await subscriber.subscribe(followed)
    for n in range(1, 4):
        await publisher.publish(followed, data(n))
    await handler.wait_for(3)

    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as admin:
        # Its listening connection is cut, and it cannot come back for now.
        await admin.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            [f"tidings-listen-{subscriber.node_id}"],
        )
        await until(lambda: is_not_ready(subscriber), "the node noticed the loss")
        for n in range(4, 11):  # no notice of these can reach it
            await publisher.publish(followed, data(n))
        await admin.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))

    delivered = await handler.wait_for(10)
    await publisher.publish(followed, data(11))
    delivered = await handler.wait_for(11)
    assert [p.offset for p in delivered] == list(range(1, 12))
    assert [p.data for p in delivered] == [data(n) for n in range(1, 12)]
    assert len(handler.publications) == 11


@pytest.mark.parametrize("notify", ["true", "false"])
async def test_a_node_command_reaches_the_other_node_once_and_counts_both(
    make_broker: BrokerMaker, notify: str
) -> None:
    sender, other = make_broker(), make_broker(notify=notify, poll_interval="0.05")
    heard_here, heard_there = RecordingCommands(), RecordingCommands()
    sender.listen(heard_here)
    other.listen(heard_there)
    await sender.start(RecordingHandler())
    await other.start(RecordingHandler())
    command = DisconnectUser("mallory", 4003, "banned")

    nodes = await sender.send_to_nodes(command)
    there = await heard_there.wait_for(1)
    await sender.send_to_nodes(DisconnectUser("next", 4003, "banned"))  # comes after
    await heard_there.wait_for(2)

    assert nodes == 2
    assert heard_here.commands[:1] == [command]
    assert there == [command]
    assert [c.user for c in heard_there.commands] == ["mallory", "next"]  # each once


# -- the trim ------------------------------------------------------------------------------


async def test_the_trim_deletes_what_history_no_longer_gives_and_expired_keys(
    make_broker: BrokerMaker, schema: str, clock: FakeClock
) -> None:
    broker = make_broker()
    await broker.start(RecordingHandler())
    small, brief = channel("small"), channel("brief")
    for n in range(10):
        await broker.publish(small, data(n), key=f"k{n}")
    await broker.publish(brief, data(1))
    clock.advance(HOUR_MS)  # past brief's ttl and the dedupe window

    async with await psycopg.AsyncConnection.connect(POSTGRES_URL, autocommit=True) as conn:
        await trim(conn, schema, NAMESPACES, DedupeOptions(60_000), clock.now_ms())
        offsets = await conn.execute(
            sql.SQL('SELECT channel, "offset" FROM {}.publications ORDER BY 1, 2').format(
                sql.Identifier(schema)
            )
        )
        kept = await offsets.fetchall()
        keys = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}.idempotency_keys").format(sql.Identifier(schema))
        )
        key_count = await keys.fetchone()

    # small keeps its last 3 (an hour old: at its ttl's edge, kept); brief's is past its ttl
    assert kept == [(small, 8), (small, 9), (small, 10)]
    assert key_count == (0,)
    read = await broker.history(small)
    assert isinstance(read.recovery, Replay)
    assert read.head.offset == 10


# -- PostgreSQL going away -------------------------------------------------------------


@pytest.fixture
def local_postgres() -> Iterator[LocalPostgres]:
    server = LocalPostgres().create()
    yield server
    server.destroy()


async def test_while_postgres_is_down_the_node_is_not_ready_and_publish_fails_then_both_recover(
    local_postgres: LocalPostgres, clock: FakeClock
) -> None:
    url = local_postgres.url
    subscriber = PostgresBroker(url, NAMESPACES, clock=clock)
    publisher = PostgresBroker(url, NAMESPACES, clock=clock)
    handler = RecordingHandler()
    followed = channel()
    try:
        await subscriber.start(handler)
        await publisher.start(RecordingHandler())
        await subscriber.subscribe(followed)
        await publisher.publish(followed, data(1))
        await handler.wait_for(1)

        await asyncio.to_thread(local_postgres.stop, "immediate")
        ready_while_down = await publisher.is_ready()
        with pytest.raises(BrokerError):
            await publisher.publish(followed, data(2))
        await asyncio.to_thread(local_postgres.start)
        await until(publisher.is_ready, "the publisher is ready again")
        await until(subscriber.is_ready, "the subscriber is ready again")
        after = await publisher.publish(followed, data(3))
        delivered = await handler.wait_for(2)
    finally:
        await subscriber.close()
        await publisher.close()

    assert not ready_while_down
    # The failed publish was not committed: the next one took offset 2, and the node
    # got each once, in order, across the restart.
    assert after.position.offset == 2
    assert [(p.offset, p.data) for p in delivered] == [(1, data(1)), (2, data(3))]
