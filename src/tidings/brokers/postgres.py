"""The PostgreSQL broker: many stateless nodes share channels through one database.

Network I/O with psycopg 3 (``psycopg_pool`` for commands, one more connection per node
for LISTEN). PostgreSQL is the truth: the tables live in a schema of their own, created
and upgraded by the nodes (``postgres_schema``). Each publish is one call of the
schema's ``publish`` function: it upserts the channel's row (which locks it until
commit, so publishers of a channel queue there, on whatever node), checks the
idempotency key under that lock, moves the head by one, stores the publication and the
key, and NOTIFYs it, sent at commit. The publishes waiting on a node go together, in
one transaction per batch (``postgres_batch``: group commit). So offsets are gap-free
per channel with any number of nodes publishing, and a publish returns only once its
transaction committed.

* **Epochs**: a channel's epoch is drawn by the node that first makes its row (by a
  publish, or a read of a channel never published to, so that its ``(epoch, 0)`` stays
  valid). Rows of published channels are never deleted, so the epoch changes only if
  the row is lost (the schema dropped, a table restored without it).
* **Timestamps** come from the publishing node's clock (injectable, as for Redis); the
  history ttl and the dedupe window are judged with the same clock.
* **History** reads keep, of the rows present, the last ``size`` offsets and evict from
  the front those older than the ttl, as every broker does; the trim
  (``postgres_trim``), on each node's upkeep timer, deletes what reads no longer give.

Delivery (``postgres_follower``): one task per node, the follower, hears publications
of the channels the node serves through LISTEN/NOTIFY (``notify``, the default) or by
polling (``notify = false``, pure pull), and delivers each once, in offset order, by the
live catch-up rule (``core.catchup``), reading from the table whatever it did not hear.

Readiness: ``is_ready`` is true while the follower is following and a ``SELECT 1``
answers within ``PROBE_TIMEOUT_S``. A publish waits at most ``publish_timeout_s``; on
any failure it raises ``BrokerError``, and it never returns a position whose
transaction did not commit: the publish function's result comes back only after the
commit of its one-statement transaction (libpq reports a failed commit as an error).

Presence (``postgres_presence``) and node commands (``node_commands``' frames) travel
as NOTIFY on topics of their own and, for pure-pull nodes, as ``node_events`` rows
read in commit order (``pg_snapshot_xmin``: a transaction older than every running one
has finished, so reading by transaction id up to it misses none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Final

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tidings.brokers.base import (
    HistoryRead,
    NodeCommand,
    NodeCommandHandler,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.memory import random_epoch
from tidings.brokers.node_commands import NodeCommands
from tidings.brokers.postgres_batch import (
    WRITERS,
    PublishBatcher,
    PublishNotSent,
    PublishUnanswered,
)
from tidings.brokers.postgres_follower import CONNECT_TIMEOUT_S, PostgresFollower
from tidings.brokers.postgres_presence import (
    PRESENCE_LIFETIME_S,
    PRESENCE_REFRESH_S,
    PostgresPresence,
)
from tidings.brokers.postgres_rows import COLUMNS, notice_body, publication_of, retained
from tidings.brokers.postgres_schema import SchemaTooNew, in_schema, migrate
from tidings.brokers.postgres_target import PostgresTarget, without_credentials
from tidings.brokers.postgres_trim import trim
from tidings.clock import Clock, SystemClock
from tidings.core.channel import ChannelName, namespace_of
from tidings.core.dedupe import DedupeOptions, dedupe_key
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position
from tidings.core.recovery import Replay, decide_recovery, latest
from tidings.errors import BrokerError, BrokerUnavailable

# SchemaTooNew is postgres_schema's, offered here too: it is what ``start`` may raise.
__all__ = ["PostgresBroker", "SchemaTooNew"]

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S: Final = 1.5
PROBE_TIMEOUT_S: Final = 1.0
TRIM_INTERVAL_S: Final = 60.0

_Row = tuple[object, ...]
_Conn = AsyncConnection[_Row]

_PUBLISH: Final = "SELECT * FROM {schema}.publish(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_HEAD: Final = """
    WITH made AS (
        INSERT INTO {schema}.channels VALUES (%(channel)s, %(namespace)s, %(epoch)s, 0, %(now)s)
        ON CONFLICT (channel) DO NOTHING RETURNING epoch, head
    )
    SELECT epoch, head FROM made UNION ALL
    SELECT epoch, head FROM {schema}.channels WHERE channel = %(channel)s
"""
_HEAD_AGAIN: Final = "SELECT epoch, head FROM {schema}.channels WHERE channel = %(channel)s"
_AFTER: Final = (
    "SELECT c.epoch, c.head, "
    + COLUMNS
    + """ FROM {schema}.channels c LEFT JOIN LATERAL (
        SELECT * FROM {schema}.publications p WHERE p.channel = c.channel
        AND p."offset" > greatest(%(after)s, c.head - %(size)s) AND p."offset" <= c.head
        ORDER BY p."offset" LIMIT %(limit)s
    ) p ON true WHERE c.channel = %(channel)s ORDER BY p."offset"
"""
)
_LATEST: Final = (
    "SELECT c.epoch, c.head, "
    + COLUMNS
    + """ FROM {schema}.channels c LEFT JOIN LATERAL (
        SELECT * FROM {schema}.publications p WHERE p.channel = c.channel
        AND p."offset" > c.head - %(size)s AND p."offset" <= c.head
        ORDER BY p."offset" DESC LIMIT %(limit)s
    ) p ON true WHERE c.channel = %(channel)s ORDER BY p."offset"
"""
)
_SEND_COMMAND: Final = """
    WITH sent AS (SELECT pg_notify(%(topic)s, %(payload)s)),
    stored AS (
        INSERT INTO {schema}.node_events (topic, payload) SELECT %(topic)s, %(payload)s FROM sent
    )
    SELECT count(*) FROM {schema}.nodes WHERE expires_at > now() AND node <> %(node)s
"""
_LEAVE_NODE: Final = "DELETE FROM {schema}.nodes WHERE node = %s"


class PostgresBroker:
    """A broker shared by many nodes through PostgreSQL; see the module docstring."""

    def __init__(
        self,
        url: str,
        namespaces: Namespaces,
        *,
        clock: Clock | None = None,
        dedupe: DedupeOptions | None = None,
        epoch_factory: Callable[[], str] = random_epoch,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        presence_lifetime_s: float = PRESENCE_LIFETIME_S,
        presence_refresh_s: float = PRESENCE_REFRESH_S,
        trim_interval_s: float = TRIM_INTERVAL_S,
        node_id: str | None = None,
        options: Mapping[str, object] | None = None,
    ) -> None:
        """Prepare a broker for ``url``; nothing connects before ``start``.

        ``options`` is the ``[brokers.postgres]`` table (``schema``, ``notify``,
        ``poll_interval``, ``pool_size``); the URL's query parameters win over it.

        Raises:
            ConfigError: the URL or ``options`` is not one this broker reads.
        """
        self._target = PostgresTarget.parse(url, options)
        self._display_url = without_credentials(url)
        self._namespaces = namespaces
        self._clock = clock or SystemClock()
        self._dedupe = dedupe or DedupeOptions()
        self._epoch_factory = epoch_factory
        self._publish_timeout_s = publish_timeout_s
        self._refresh_s = presence_refresh_s
        self._trim_interval_s = trim_interval_s
        self.node_id = node_id or secrets.token_hex(8)
        schema = self._target.schema
        self._topics = {kind: f"{schema}.{kind}" for kind in ("publication", "presence", "control")}
        self._statements = {
            template: in_schema(template, schema)
            for template in (_PUBLISH, _HEAD, _HEAD_AGAIN, _AFTER, _LATEST)
        }
        self._pool: AsyncConnectionPool | None = None
        self._follower = PostgresFollower(
            self._target,
            self._topics,
            self.node_id,
            self._pool_or_fail,
            prepare=self._migrate,
            read_head=self._read_head,
            on_other=self._on_other_notice,
        )
        self._presence = PostgresPresence(
            schema,
            self._topics["presence"],
            self.node_id,
            self._pool_or_fail,
            self._follower.is_subscribed,
            lifetime_s=presence_lifetime_s,
        )
        self._control = NodeCommands(self.node_id)
        self._batcher = PublishBatcher(
            self._pool_or_fail,
            self._statements[_PUBLISH],
            writers=min(WRITERS, self._target.pool_size),
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._migrated = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, on_publication: PublicationHandler) -> None:
        """Bring the schema up to date, connect and start following subscribed channels.

        If PostgreSQL cannot be reached now, the broker keeps trying in the background
        and is not ready until it succeeds.

        Raises:
            SchemaTooNew: the schema was made by a newer tidings.
            BrokerError: the broker was closed.
        """
        if self._closed:
            raise BrokerError("the PostgreSQL broker was closed; make a new one")
        if self._pool is not None:
            return
        self._pool = AsyncConnectionPool(
            self._target.conninfo,
            min_size=1,
            max_size=self._target.pool_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=CONNECT_TIMEOUT_S,  # a call waits this long for a connection, then fails
        )
        await self._pool.open(wait=False)
        self._batcher.start()
        try:
            await self._migrate()
        except SchemaTooNew:
            await self.close()
            raise
        except (psycopg.Error, OSError, TimeoutError) as exc:
            logger.warning(
                "PostgreSQL at %s is not reachable (%s); retrying in the background",
                self._display_url,
                exc,
            )
        else:
            logger.info("PostgreSQL broker connected to %s", self._display_url)
        self._tasks = [
            asyncio.create_task(
                self._follower.run(on_publication), name="tidings-postgres-follower"
            ),
            asyncio.create_task(self._upkeep(), name="tidings-postgres-upkeep"),
        ]
        if self._migrated:  # reachable: be ready on return, unless it fails meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._follower.followed.wait()

    async def _migrate(self) -> None:
        if self._migrated:
            return
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            conn = await AsyncConnection.connect(self._target.conninfo, autocommit=True)
        async with conn:
            await migrate(conn, self._target.schema)
            await self._presence.renew_node(conn)
        self._migrated = True

    async def close(self) -> None:
        """Stop delivering and close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._follower.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._batcher.close()
        if self._pool is not None:
            with contextlib.suppress(psycopg.Error, OSError, TimeoutError):
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    async with self._pool.connection() as conn:
                        await conn.execute(
                            in_schema(_LEAVE_NODE, self._target.schema), [self.node_id]
                        )
            await self._pool.close()
        logger.info("PostgreSQL broker closed")

    async def is_ready(self) -> bool:
        """Whether the follower is connected and PostgreSQL answers a ``SELECT 1`` within
        ``PROBE_TIMEOUT_S`` (so this returns within about that)."""
        if self._closed or not self._follower.is_following or self._pool is None:
            return False
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                async with self._pool.connection(timeout=PROBE_TIMEOUT_S) as conn:
                    await conn.execute("SELECT 1")
        except (psycopg.Error, OSError, TimeoutError):
            return False
        return True

    def _pool_or_fail(self) -> AsyncConnectionPool:
        if self._closed or self._pool is None:
            raise BrokerUnavailable("the PostgreSQL broker is not started")
        return self._pool

    # -- publishing and history ------------------------------------------------------------

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish ``data`` in ``channel`` in one transaction (see the module docstring).

        Raises:
            BrokerError: PostgreSQL failed or is unreachable, or did not answer within
                ``publish_timeout_s``; the publication may or may not have been made
                (retry with the same ``key``).
        """
        now_ms = self._clock.now_ms()
        client, user = (None, None) if info is None else (info.client, info.user)
        params = (
            channel,
            namespace_of(channel),
            self._epoch_factory(),
            now_ms,
            data,
            key,
            None if key is None else dedupe_key(key, info).encode(),
            client,
            user,
            max(1, self._dedupe.window_ms),
            self._topics["publication"],
            notice_body(channel, now_ms, key, info, data),
        )
        what = f"publishing in {channel}"
        self._pool_or_fail()  # refused at once when not started
        try:
            row = await self._batcher.publish(channel, params, self._publish_timeout_s)
        except PublishNotSent as exc:
            raise BrokerUnavailable(
                f"{what} failed: PostgreSQL at {self._display_url} could not take it within "
                f"{self._publish_timeout_s:g} s; it was not sent and will not be published"
            ) from exc
        except PublishUnanswered as exc:
            raise BrokerError(
                f"{what} failed: PostgreSQL at {self._display_url} did not answer within "
                f"{self._publish_timeout_s:g} s; it may have been published; "
                "retry with the same key"
            ) from exc
        except PoolTimeout as exc:
            raise BrokerUnavailable(
                f"{what} failed: no connection to PostgreSQL at {self._display_url}; "
                "it was not sent and will not be published"
            ) from exc
        except (psycopg.Error, OSError) as exc:
            raise BrokerError(f"{what} failed: {exc}") from exc
        epoch, offset, duplicate = row
        return PublishResult(Position(str(epoch), int(str(offset))), duplicate=bool(duplicate))

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``) in one statement.

        Raises:
            BrokerError: PostgreSQL failed or is unreachable.
        """
        options = self._namespaces.options_for(channel).history
        wanted = options.size if limit is None else min(max(limit, 0), options.size)
        params: dict[str, object] = {"channel": channel, "size": options.size}
        if since is None:
            statement = self._statements[_LATEST]
            params["limit"] = wanted
        else:
            statement = self._statements[_AFTER]
            params["after"] = since.offset
            params["limit"] = options.size  # to find the first retained after ``since``
        try:
            async with self._pool_or_fail().connection() as conn:
                rows = await (await conn.execute(statement, params)).fetchall()
                if not rows:  # never published to nor read: make its row and epoch
                    await self._head(conn, channel)
                    rows = await (await conn.execute(statement, params)).fetchall()
        except (psycopg.Error, OSError) as exc:
            raise BrokerError(f"reading the history of {channel} failed: {exc}") from exc
        epoch, head_offset = str(rows[0][0]), int(str(rows[0][1]))
        publications = [
            publication_of(channel, epoch, row[2:]) for row in rows if row[2] is not None
        ]
        kept = retained(publications, head_offset, options, self._clock.now_ms())
        head = Position(epoch, head_offset)
        if since is None:
            return HistoryRead(head, Replay(latest(kept, limit)))
        return HistoryRead(head, decide_recovery(since, epoch, head_offset, kept, limit))

    async def _head(self, conn: _Conn, channel: ChannelName) -> Position:
        """Return ``channel``'s head, making its row (and epoch) if it has none."""
        params = {
            "channel": channel,
            "namespace": namespace_of(channel),
            "epoch": self._epoch_factory(),
            "now": self._clock.now_ms(),
        }
        row = await (await conn.execute(self._statements[_HEAD], params)).fetchone()
        if row is None:
            # Another node made the row while this statement ran: its snapshot, taken
            # before, does not show the row its insert waited for. A new one does.
            row = await (await conn.execute(self._statements[_HEAD_AGAIN], params)).fetchone()
        if row is None:
            raise BrokerError(f"the row of {channel} vanished while it was read")
        return Position(str(row[0]), int(str(row[1])))

    async def _read_head(self, channel: ChannelName) -> Position:
        async with self._pool_or_fail().connection() as conn:
            return await self._head(conn, channel)

    # -- subscriptions (the follower's) ----------------------------------------------------

    async def subscribe(self, channel: ChannelName) -> None:
        """Start delivering ``channel``'s publications; idempotent.

        Raises:
            BrokerError: PostgreSQL failed; the channel is not subscribed.
        """
        await self._follower.subscribe(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications, once those published before the
        call are delivered; idempotent."""
        await self._follower.unsubscribe(channel)

    def _on_other_notice(self, topic: str, payload: str) -> None:
        if topic == self._topics["presence"]:
            self._presence.receive(payload)
        elif topic == self._topics["control"]:
            self._control.receive(payload.encode())

    # -- upkeep: this node's liveness, and the trim -------------------------------------------

    async def _upkeep(self) -> None:
        trimmed_at = -self._trim_interval_s
        loop = asyncio.get_running_loop()
        while not self._closed:
            try:
                async with self._pool_or_fail().connection() as conn:
                    await self._presence.renew_node(conn)
                    if loop.time() - trimmed_at >= self._trim_interval_s:
                        trimmed_at = loop.time()
                        deleted = await trim(
                            conn,
                            self._target.schema,
                            self._namespaces,
                            self._dedupe,
                            self._clock.now_ms(),
                        )
                        logger.debug("trim deleted %d rows", deleted)
            except (psycopg.Error, OSError) as exc:
                logger.debug("upkeep failed (%s); the follower reports the outage", exc)
            await asyncio.sleep(self._refresh_s)  # a timer, not a wait for an event

    # -- presence and node commands --------------------------------------------------------

    @property
    def presence_store(self) -> PostgresPresence:
        """Presence shared by every node on this database (``HasPresenceStore``)."""
        return self._presence

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand node commands, this node's and others', to ``on_command``."""
        self._control.listen(on_command)

    async def send_to_nodes(self, command: NodeCommand) -> int:
        """Handle ``command`` here, then tell the other nodes (``NodeControl``).

        Returns:
            1 (this node) plus the other live nodes in the ``nodes`` table.

        Raises:
            BrokerError: PostgreSQL failed or is unreachable; only this node handled it.
        """
        self._control.handle(command)
        params = {
            "topic": self._topics["control"],
            "payload": self._control.encode(command).decode(),
            "node": self.node_id,
        }
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                async with self._pool_or_fail().connection() as conn:
                    statement = in_schema(_SEND_COMMAND, self._target.schema)
                    row = await (await conn.execute(statement, params)).fetchone()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            raise BrokerError(f"telling the other nodes failed: {exc!r}") from exc
        return 1 + (0 if row is None else int(str(row[0])))
