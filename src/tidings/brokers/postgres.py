"""The PostgreSQL broker: many stateless nodes share channels through one database.

Network I/O with psycopg 3 (``psycopg_pool`` for commands, one more connection per node
for LISTEN). PostgreSQL is the truth: the tables live in a schema of their own, created
and upgraded by the nodes (``postgres_schema``). Each publish is one call of the
schema's ``publish`` function, one transaction: it upserts the channel's row (which
locks it, so publishers of a channel queue there, on whatever node), checks the
idempotency key under that lock, moves the head by one, stores the publication and the
key, and NOTIFYs it, sent at commit. So offsets are gap-free per channel with any number
of nodes publishing, and a publish returns only once its transaction committed.

* **Epochs**: a channel's epoch is drawn by the node that first makes its row (by a
  publish, or a read of a channel never published to, so that its ``(epoch, 0)`` stays
  valid). Rows of published channels are never deleted, so the epoch changes only if
  the row is lost (the schema dropped, a table restored without it).
* **Timestamps** come from the publishing node's clock (injectable, as for Redis); the
  history ttl and the dedupe window are judged with the same clock.
* **History** reads keep, of the rows present, the last ``size`` offsets and evict from
  the front those older than the ttl, as every broker does; the trim
  (``postgres_trim``), on each node's upkeep timer, deletes what reads no longer give.

Theory of operation: delivery
-----------------------------
Each subscribed channel has a ``_ChannelState`` holding ``last``, the position of the
last publication handed to the hub. One task per node, the *follower*, is the only one
that delivers, so deliveries of a channel never interleave:

* **notify** (default): the follower opens its own connection, LISTENs to the schema's
  topics, then catches up (below) and reads notices. A publication's notice carries it
  whole when it fits in NOTIFY's 8000 bytes; a larger one is announced by channel and
  position only and read back. Each is judged by ``core.catchup`` against ``last``:
  the next one is delivered, a repeat dropped, and a hole (or a new epoch) makes the
  follower read the channel's publications after ``last`` from the table first.
* **pure pull** (``notify = false``): no LISTEN (transaction-pooling proxies do not
  carry it); every ``poll_interval`` the follower catches up.
* **Catching up** reads, in one query, every subscribed channel's publications after
  its ``last`` (from offset 1 if its epoch changed) and feeds them through the same
  rule. It runs after every (re)connection, once LISTEN is in place, so a notice lost
  with a connection is never a silent gap: what it announced is in the table.
* ``subscribe`` makes the state *pending* (notices for it are held), reads the head
  into ``last``, then releases what was held through the rule: a publication made
  after it returns arrives; one made before is in history.

Readiness: ``is_ready`` is true while the follower holds its connection (or its last
poll succeeded) and a ``SELECT 1`` answers within ``PROBE_TIMEOUT_S``. A publish waits
at most ``publish_timeout_s``; on any failure it raises ``BrokerError``, and it never
returns a position whose transaction did not commit.

Presence (``postgres_presence``) and node commands (``redis_control``'s frames) travel
as NOTIFY on topics of their own and, for pure-pull nodes, as ``node_events`` rows
read in commit order (``pg_snapshot_xmin``: a transaction older than every running one
has finished, so reading by transaction id up to it misses none).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec
import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from tidings.brokers.base import (
    HistoryRead,
    NodeCommand,
    NodeCommandHandler,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.memory import random_epoch
from tidings.brokers.postgres_presence import (
    PRESENCE_LIFETIME_S,
    PRESENCE_REFRESH_S,
    PostgresPresence,
)
from tidings.brokers.postgres_schema import SchemaTooNew, in_schema, migrate
from tidings.brokers.postgres_target import PostgresTarget, without_credentials
from tidings.brokers.postgres_trim import trim
from tidings.brokers.redis_control import RedisNodeControl
from tidings.clock import Clock, SystemClock
from tidings.core.backoff import Backoff
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName, namespace_of
from tidings.core.dedupe import DedupeOptions, dedupe_key
from tidings.core.history import HistoryOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay, decide_recovery, latest
from tidings.errors import BrokerError, BrokerUnavailable

__all__ = ["PostgresBroker", "SchemaTooNew"]

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S: Final = 1.5
PROBE_TIMEOUT_S: Final = 1.0
CONNECT_TIMEOUT_S: Final = 5.0  # how long ``start`` waits for the follower to connect
LISTEN_PROBE_INTERVAL_S: Final = 1.0  # the listening connection is checked this often
TRIM_INTERVAL_S: Final = 60.0
RECONNECT_BASE_DELAY_S: Final = 0.05
RECONNECT_MAX_DELAY_S: Final = 2.0
# NOTIFY payloads must stay under 8000 bytes; the epoch and offset go in front.
NOTICE_LIMIT: Final = 7900

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
_COLUMNS: Final = 'p."offset", p.ts_ms, p.data, p.key, p.client, p."user"'
_AFTER: Final = (
    "SELECT c.epoch, c.head, "
    + _COLUMNS
    + """ FROM {schema}.channels c LEFT JOIN LATERAL (
        SELECT * FROM {schema}.publications p WHERE p.channel = c.channel
        AND p."offset" > greatest(%(after)s, c.head - %(size)s) AND p."offset" <= c.head
        ORDER BY p."offset" LIMIT %(limit)s
    ) p ON true WHERE c.channel = %(channel)s ORDER BY p."offset"
"""
)
_LATEST: Final = (
    "SELECT c.epoch, c.head, "
    + _COLUMNS
    + """ FROM {schema}.channels c LEFT JOIN LATERAL (
        SELECT * FROM {schema}.publications p WHERE p.channel = c.channel
        AND p."offset" > c.head - %(size)s AND p."offset" <= c.head
        ORDER BY p."offset" DESC LIMIT %(limit)s
    ) p ON true WHERE c.channel = %(channel)s ORDER BY p."offset"
"""
)
_CATCH_UP: Final = (
    "SELECT c.channel, c.epoch, c.head, "
    + _COLUMNS
    + """ FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS s(channel, epoch, after)
    JOIN {schema}.channels c ON c.channel = s.channel
    JOIN {schema}.publications p ON p.channel = c.channel
        AND p."offset" > CASE WHEN c.epoch = s.epoch THEN s.after ELSE 0 END
        AND p."offset" <= c.head
    ORDER BY c.channel, p."offset"
"""
)
_READ_ONE: Final = (
    "SELECT "
    + _COLUMNS
    + """ FROM {schema}.publications p
    WHERE p.channel = %s AND p."offset" = %s"""
)
_SEND_COMMAND: Final = """
    WITH sent AS (SELECT pg_notify(%(topic)s, %(payload)s)),
    stored AS (
        INSERT INTO {schema}.node_events (topic, payload) SELECT %(topic)s, %(payload)s FROM sent
    )
    SELECT count(*) FROM {schema}.nodes WHERE expires_at > now() AND node <> %(node)s
"""
_EVENTS: Final = """
    WITH upto AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT upto.xmin::text, e.topic, e.payload FROM upto
    LEFT JOIN {schema}.node_events e ON e.txid >= %s::text::xid8 AND e.txid < upto.xmin
    ORDER BY e.txid, e.id
"""
_LEAVE_NODE: Final = "DELETE FROM {schema}.nodes WHERE node = %s"


class _Notice(msgspec.Struct, array_like=True, frozen=True):
    """A publication as NOTIFY carries it, but for its epoch and offset (in front)."""

    channel: str
    ts: int
    key: str | None
    client: str | None
    user: str | None
    data: msgspec.Raw


_encode = msgspec.json.Encoder().encode
_decode_notice = msgspec.json.Decoder(_Notice).decode
_FULL: Final = "F"  # the notice holds the publication
_ANNOUNCED: Final = "A"  # the notice names the channel only: read it back


@dataclass(slots=True, eq=False)
class _ChannelState:
    """This node's subscription to one channel; see the theory of operation."""

    last: Position | None = None  # the last publication handed to the hub
    held: list[tuple[Position, Publication | None]] | None = field(default_factory=list)
    left: set[str] = field(default_factory=set)  # epochs moved away from


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
            for template in (_PUBLISH, _HEAD, _AFTER, _LATEST, _CATCH_UP, _READ_ONE)
        }
        self._pool: AsyncConnectionPool | None = None
        self._presence = PostgresPresence(
            schema,
            self._topics["presence"],
            self.node_id,
            self._pool_or_fail,
            lambda channel: channel in self._states,
            lifetime_s=presence_lifetime_s,
        )
        self._control = RedisNodeControl(self.node_id)
        self._states: dict[str, _ChannelState] = {}
        self._on_publication: PublicationHandler | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._following = False  # the follower holds its connection (or polled last time)
        self._followed = asyncio.Event()  # set once the follower first got there
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
        self._on_publication = on_publication
        if self._pool is not None:
            return
        self._pool = AsyncConnectionPool(
            self._target.conninfo,
            min_size=1,
            max_size=self._target.pool_size,
            kwargs={"autocommit": True},
            open=False,
            reconnect_timeout=0,  # never give up: the database comes back
        )
        await self._pool.open(wait=False)
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
            asyncio.create_task(self._follow(), name="tidings-postgres-follower"),
            asyncio.create_task(self._upkeep(), name="tidings-postgres-upkeep"),
        ]
        if self._migrated:  # reachable: be ready on return, unless it fails meanwhile
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CONNECT_TIMEOUT_S):
                    await self._followed.wait()

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
        self._following = False
        self._on_publication = None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._states.clear()
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
        if self._closed or not self._following or self._pool is None:
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
        notice = (
            _FULL + _encode(_Notice(channel, now_ms, key, client, user, msgspec.Raw(data))).decode()
        )
        if len(notice.encode()) > NOTICE_LIMIT:
            notice = _ANNOUNCED + channel
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
            notice,
        )
        what = f"publishing in {channel}"
        pool = self._pool_or_fail()
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                async with pool.connection() as conn:
                    cursor = await conn.execute(self._statements[_PUBLISH], params)
                    row = await cursor.fetchone()
        except TimeoutError as exc:
            raise BrokerError(
                f"{what} failed: PostgreSQL at {self._display_url} did not answer within "
                f"{self._publish_timeout_s:g} s; it may have been published; "
                "retry with the same key"
            ) from exc
        except (psycopg.Error, OSError) as exc:
            raise BrokerError(f"{what} failed: {exc}") from exc
        assert row is not None  # the function always returns its row
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
        publications = [_publication(channel, epoch, row[2:]) for row in rows if row[2] is not None]
        retained = _retained(publications, head_offset, options, self._clock.now_ms())
        head = Position(epoch, head_offset)
        if since is None:
            return HistoryRead(head, Replay(latest(retained, limit)))
        return HistoryRead(head, decide_recovery(since, epoch, head_offset, retained, limit))

    async def _head(self, conn: _Conn, channel: ChannelName) -> Position:
        """Return ``channel``'s head, making its row (and epoch) if it has none."""
        params = {
            "channel": channel,
            "namespace": namespace_of(channel),
            "epoch": self._epoch_factory(),
            "now": self._clock.now_ms(),
        }
        row = await (await conn.execute(self._statements[_HEAD], params)).fetchone()
        assert row is not None  # made, or there already
        return Position(str(row[0]), int(str(row[1])))

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: ChannelName) -> None:
        """Start delivering ``channel``'s publications; idempotent.

        Raises:
            BrokerError: PostgreSQL failed; the channel is not subscribed.
        """
        if channel in self._states:
            return
        state = _ChannelState()
        self._states[channel] = state  # pending: notices are held from now on
        try:
            async with self._pool_or_fail().connection() as conn:
                head = await self._head(conn, channel)
        except (psycopg.Error, OSError, BrokerError) as exc:
            if self._states.get(channel) is state:
                del self._states[channel]
            raise BrokerError(f"subscribing to {channel} failed: {exc}") from exc
        if self._states.get(channel) is not state:
            return  # unsubscribed meanwhile
        held, state.held, state.last = state.held or [], None, head
        for position, publication in held:
            await self._receive(channel, position, publication)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications; idempotent.

        What was published before the call is delivered first (read from the table: its
        notice, or the next poll, may not have come yet); nothing after it returns.
        """
        state = self._states.get(channel)
        if state is None:
            return
        try:
            await self._catch_up([channel])
        except (psycopg.Error, OSError, BrokerError) as exc:
            logger.debug("%s: not caught up before unsubscribing (%s)", channel, exc)
        if self._states.get(channel) is state:
            del self._states[channel]

    # -- the follower: the one task that delivers --------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff(
            base_s=RECONNECT_BASE_DELAY_S, cap_s=RECONNECT_MAX_DELAY_S, uniform=random.uniform
        )
        down_since_logged = False
        while not self._closed:
            try:
                await self._migrate()
                if self._target.notify:
                    await self._listen(backoff)
                else:
                    await self._poll(backoff)
            except SchemaTooNew as exc:
                logger.error("%s", exc)  # a newer node migrated meanwhile: stop here
                self._following = False
                return
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if self._following or not down_since_logged:
                    logger.warning(
                        "PostgreSQL at %s was lost (%s); reconnecting", self._display_url, exc
                    )
                    down_since_logged = True
                self._following = False
            else:
                return
            await asyncio.sleep(backoff.next_delay_s())

    async def _listen(self, backoff: Backoff) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            conn = await AsyncConnection.connect(
                self._target.conninfo,
                autocommit=True,
                application_name=f"tidings-listen-{self.node_id}",  # see pg_stat_activity
            )
        async with conn:
            for topic in self._topics.values():
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(topic)))
            await self._catch_up()  # what was published while not listening
            self._following = True
            self._followed.set()
            backoff.reset()
            while not self._closed:
                async for notice in conn.notifies(timeout=LISTEN_PROBE_INTERVAL_S):
                    await self._on_notice(notice.channel, notice.payload)
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await conn.execute("SELECT 1")  # a silent network loss shows here

    async def _poll(self, backoff: Backoff) -> None:
        async with self._pool_or_fail().connection() as conn:
            row = await (
                await conn.execute("SELECT pg_snapshot_xmin(pg_current_snapshot())::text")
            ).fetchone()
        assert row is not None
        events_from = str(row[0])
        while not self._closed:
            await self._catch_up()
            async with self._pool_or_fail().connection() as conn:
                rows = await (
                    await conn.execute(in_schema(_EVENTS, self._target.schema), [events_from])
                ).fetchall()
            for upto, topic, payload in rows:
                events_from = str(upto)
                if topic is not None:
                    await self._on_notice(str(topic), str(payload))
            self._following = True
            self._followed.set()
            backoff.reset()
            await asyncio.sleep(self._target.poll_interval_s)  # pure pull: poll on a timer

    async def _on_notice(self, topic: str, payload: str) -> None:
        if topic == self._topics["presence"]:
            self._presence.receive(payload)
        elif topic == self._topics["control"]:
            self._control.receive(payload.encode())
        elif topic == self._topics["publication"]:
            epoch, _, rest = payload.partition(" ")
            offset, _, body = rest.partition(" ")
            position = Position(epoch, int(offset))
            if body.startswith(_ANNOUNCED):
                await self._receive(ChannelName(body[1:]), position, None)
                return
            try:
                notice = _decode_notice(body[1:])
            except (msgspec.ValidationError, msgspec.DecodeError):
                logger.warning("ignored an unreadable publication notice: %r", payload[:200])
                return
            channel = ChannelName(notice.channel)
            if channel not in self._states:
                return
            info = None if notice.client is None else ClientInfo(notice.client, notice.user or "")
            publication = Publication(
                channel, epoch, position.offset, bytes(notice.data), notice.ts, notice.key, info
            )
            await self._receive(channel, position, publication)

    async def _receive(
        self, channel: ChannelName, position: Position, publication: Publication | None
    ) -> None:
        """Judge a live publication (``None``: announced only) by the catch-up rule."""
        state = self._states.get(channel)
        if state is None:
            return
        if state.held is not None:
            state.held.append((position, publication))
            return
        decision = decide_catch_up(state.last, position, state.left)
        if decision is CatchUp.ALREADY_HAD:
            return
        if decision is CatchUp.DELIVER and publication is not None:
            self._deliver(state, publication)
        else:  # a hole, a new epoch, or a publication to read back: the table has it
            await self._catch_up([channel])

    async def _catch_up(self, channels: Iterable[str] | None = None) -> None:
        """Deliver every publication of ``channels`` (all subscribed ones) after ``last``."""
        states = {
            channel: state
            for channel in (self._states if channels is None else channels)
            if (state := self._states.get(channel)) is not None and state.last is not None
        }
        if not states:
            return
        held = [state.last for state in states.values() if state.last is not None]
        params = ([*states], [p.epoch for p in held], [p.offset for p in held])
        async with self._pool_or_fail().connection() as conn:
            rows = await (await conn.execute(self._statements[_CATCH_UP], params)).fetchall()
        for row in rows:
            channel = ChannelName(str(row[0]))
            state = states[channel]
            if self._states.get(channel) is not state:
                continue  # unsubscribed meanwhile
            publication = _publication(channel, str(row[1]), row[3:])
            decision = decide_catch_up(state.last, publication.position, state.left)
            if decision is CatchUp.ALREADY_HAD:
                continue
            if decision is CatchUp.GAP and state.last is not None:
                state.left.add(state.last.epoch)
            elif decision is CatchUp.HOLE:
                logger.warning(
                    "%s: publications after %s are no longer in history; resuming at %s",
                    channel,
                    state.last,
                    publication.position,
                )
            self._deliver(state, publication)

    def _deliver(self, state: _ChannelState, publication: Publication) -> None:
        state.last = publication.position
        handler = self._on_publication
        if handler is None:
            return
        try:
            handler(publication)
        except Exception:  # a faulty handler must not stop the follower
            logger.exception("publication handler failed on %s", publication.position)

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


def _publication(channel: ChannelName, epoch: str, row: _Row) -> Publication:
    offset, ts_ms, data, key, client, user = row
    info = None if client is None else ClientInfo(str(client), str(user or ""))
    return Publication(
        channel,
        epoch,
        int(str(offset)),
        bytes(data) if isinstance(data, bytes | memoryview) else str(data).encode(),
        int(str(ts_ms)),
        None if key is None else str(key),
        info,
    )


def _retained(
    publications: list[Publication], head_offset: int, options: HistoryOptions, now_ms: int
) -> list[Publication]:
    """Keep what the namespace retains: the last ``size`` offsets, evicting from the
    front those older than the ttl (as ``ChannelHistory`` does)."""
    first_kept = head_offset - options.size + 1
    oldest_ms = now_ms - options.ttl_ms
    start = 0
    while start < len(publications) and (
        publications[start].offset < first_kept or publications[start].ts < oldest_ms
    ):
        start += 1
    return publications[start:]
