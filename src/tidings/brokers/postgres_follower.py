"""The PostgreSQL broker's follower: the one task of a node that delivers publications of
the channels it serves, woken by LISTEN/NOTIFY or polling. I/O with psycopg: its own
listening connection, and the broker's pool for reads.

Theory of operation
-------------------
Each subscribed channel has a ``_ChannelState`` holding ``last``, the position of the
last publication handed to the hub. Only the follower's task, ``subscribe`` and
``unsubscribe`` deliver, and each delivery is judged against ``last`` with no await
between judging and delivering, so a channel's deliveries are in offset order, each
once, however those interleave.

* **notify**: the follower opens its own connection, LISTENs to the schema's topics,
  then catches up (below) and reads notices (``postgres_rows``). Each is judged by
  ``core.catchup`` against ``last``: the next one is delivered, a repeat dropped, and
  a hole, a new epoch or a notice that only announces makes the follower read the
  channel's publications after ``last`` from the table first. The connection is
  probed (``SELECT 1``) every ``LISTEN_PROBE_INTERVAL_S`` when quiet, so a silent
  loss shows.
* **pure pull**: no LISTEN (transaction-pooling proxies do not carry it); every
  ``poll_interval`` the follower catches up, then reads the ``node_events`` stored
  since its last poll: every event of a transaction older than the oldest running one
  (``pg_snapshot_xmin``) has been committed or rolled back, so reading by transaction
  id up to that bound, and from it next time, misses none and repeats none.
* **Catching up** reads, in one query, every subscribed channel's publications after
  its ``last`` (from offset 1 if the channel's epoch changed) and feeds them through
  the same rule. It runs after every (re)connection, once LISTEN is in place: a notice
  lost with a connection is never a silent gap, as what it announced is in the table.
* ``subscribe`` makes the state *pending* (notices for it are held), reads the head
  into ``last``, then releases what was held through the rule: a publication made
  after it returns arrives; one made before is in history. ``unsubscribe`` catches
  the channel up first: what was published before the call is delivered.

A lost connection or a failed read ends the round: the follower reconnects with
backoff and full jitter and catches every channel up before it is *following* again
(``is_following``, which the broker's ``is_ready`` requires).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

import psycopg
from psycopg import AsyncConnection, sql
from psycopg_pool import AsyncConnectionPool

from tidings.brokers.base import PublicationHandler
from tidings.brokers.postgres_rows import COLUMNS, publication_of, read_notice
from tidings.brokers.postgres_schema import SchemaTooNew, in_schema
from tidings.brokers.postgres_target import PostgresTarget
from tidings.core.backoff import Backoff
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 5.0
PROBE_TIMEOUT_S: Final = 1.0
LISTEN_PROBE_INTERVAL_S: Final = 1.0  # a quiet listening connection is checked this often
RECONNECT_BASE_DELAY_S: Final = 0.05
RECONNECT_MAX_DELAY_S: Final = 2.0

_CATCH_UP: Final = (
    "SELECT c.channel, c.epoch, "
    + COLUMNS
    + """ FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS s(channel, epoch, after)
    JOIN {schema}.channels c ON c.channel = s.channel
    JOIN {schema}.publications p ON p.channel = c.channel
        AND p."offset" > CASE WHEN c.epoch = s.epoch THEN s.after ELSE 0 END
        AND p."offset" <= c.head
    ORDER BY c.channel, p."offset"
"""
)
_EVENTS: Final = """
    WITH upto AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
    SELECT upto.xmin::text, e.topic, e.payload FROM upto
    LEFT JOIN {schema}.node_events e ON e.txid >= %s::text::xid8 AND e.txid < upto.xmin
    ORDER BY e.txid, e.id
"""
_XMIN: Final = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
_ERRORS: Final = (psycopg.Error, OSError, TimeoutError, BrokerError)


@dataclass(slots=True, eq=False)
class _ChannelState:
    """This node's subscription to one channel; see the theory of operation."""

    last: Position | None = None  # the last publication handed to the hub
    # Notices held while ``subscribe`` reads the head; ``None`` once it did.
    held: list[tuple[Position, Publication | None]] | None = field(default_factory=list)
    left: set[str] = field(default_factory=set)  # epochs moved away from


class PostgresFollower:
    """Delivers the publications of the channels a node serves; see the module docstring."""

    def __init__(
        self,
        target: PostgresTarget,
        topics: dict[str, str],
        node_id: str,
        pool: Callable[[], AsyncConnectionPool],
        *,
        prepare: Callable[[], Awaitable[None]],
        read_head: Callable[[ChannelName], Awaitable[Position]],
        on_other: Callable[[str, str], None],
    ) -> None:
        """Follow through ``target``, the schema's ``topics`` (by kind: publication,
        presence, control), reading with ``pool``. Each round first awaits ``prepare``
        (the broker brings the schema up to date); ``read_head`` returns a channel's head
        (making its row); ``on_other`` gets each presence or control notice (topic,
        payload)."""
        self._target = target
        self._topics = topics
        self._node_id = node_id
        self._pool = pool
        self._prepare = prepare
        self._read_head = read_head
        self._on_other = on_other
        self._catch_up_sql = in_schema(_CATCH_UP, target.schema)
        self._events_sql = in_schema(_EVENTS, target.schema)
        self._states: dict[str, _ChannelState] = {}
        self._on_publication: PublicationHandler | None = None
        self._following = False
        self.followed = asyncio.Event()  # set once the follower first got there
        self._catch_up_needed = False  # a catch-up outside the follower failed
        self._closed = False

    @property
    def is_following(self) -> bool:
        """Whether it holds its listening connection (or its last poll succeeded)."""
        return self._following and not self._closed

    def is_subscribed(self, channel: str) -> bool:
        """Whether this node serves ``channel``."""
        return channel in self._states

    def close(self) -> None:
        """Stop delivering (the broker cancels the task running ``run``)."""
        self._closed = True
        self._following = False
        self._on_publication = None
        self._states.clear()

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
            head = await self._read_head(channel)
        except _ERRORS as exc:
            if self._states.get(channel) is state:
                del self._states[channel]
            raise BrokerError(f"subscribing to {channel} failed: {exc}") from exc
        if self._states.get(channel) is not state:
            return  # unsubscribed meanwhile
        held, state.held, state.last = state.held or [], None, head
        try:
            for position, publication in held:
                await self._receive(channel, position, publication)
        except _ERRORS as exc:
            # Subscribed all the same: the follower reads what was missed shortly.
            logger.warning("%s: catching up after subscribing failed (%s)", channel, exc)
            self._catch_up_needed = True

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Deliver what was published before the call, then stop; idempotent."""
        state = self._states.get(channel)
        if state is None:
            return
        try:
            await self._catch_up([channel])
        except _ERRORS as exc:
            logger.debug("%s: not caught up before unsubscribing (%s)", channel, exc)
        if self._states.get(channel) is state:
            del self._states[channel]

    # -- the task --------------------------------------------------------------------------

    async def run(self, on_publication: PublicationHandler) -> None:
        """Follow until closed: rounds of connect-and-deliver, with backoff between."""
        self._on_publication = on_publication
        backoff = Backoff(
            base_s=RECONNECT_BASE_DELAY_S, cap_s=RECONNECT_MAX_DELAY_S, uniform=random.uniform
        )
        logged = False
        while not self._closed:
            try:
                await self._prepare()
                if self._target.notify:
                    await self._listen(backoff)
                else:
                    await self._poll(backoff)
            except SchemaTooNew as exc:
                logger.error("%s", exc)  # a newer node migrated meanwhile: stop here
                self._following = False
                return
            except _ERRORS as exc:
                if self._following or not logged:
                    logger.warning("PostgreSQL was lost (%s); reconnecting", exc)
                    logged = True
                self._following = False
            await asyncio.sleep(backoff.next_delay_s())

    async def _listen(self, backoff: Backoff) -> None:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            conn = await AsyncConnection.connect(
                self._target.conninfo,
                autocommit=True,
                application_name=f"tidings-listen-{self._node_id}",  # see pg_stat_activity
            )
        async with conn:
            for topic in self._topics.values():
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(topic)))
            if self.followed.is_set():  # back after a loss: drop dead pooled connections
                await self._pool().check()
            await self._catch_up()  # what was published while not listening
            self._following = True
            self.followed.set()
            backoff.reset()
            while not self._closed:
                async for notice in conn.notifies(timeout=LISTEN_PROBE_INTERVAL_S):
                    await self._on_notice(notice.channel, notice.payload)
                async with asyncio.timeout(PROBE_TIMEOUT_S):
                    await conn.execute("SELECT 1")  # a silent network loss shows here
                if self._catch_up_needed:
                    self._catch_up_needed = False
                    await self._catch_up()

    async def _poll(self, backoff: Backoff) -> None:
        async with self._pool().connection() as conn:
            row = await (await conn.execute(_XMIN)).fetchone()
        assert row is not None  # one row, always
        events_from = str(row[0])
        while not self._closed:
            self._catch_up_needed = False  # each poll catches every channel up
            await self._catch_up()
            async with self._pool().connection() as conn:
                rows = await (await conn.execute(self._events_sql, [events_from])).fetchall()
            for upto, topic, payload in rows:
                events_from = str(upto)
                if topic is not None:
                    await self._on_notice(str(topic), str(payload))
            self._following = True
            self.followed.set()
            backoff.reset()
            await asyncio.sleep(self._target.poll_interval_s)  # pure pull: poll on a timer

    # -- delivery --------------------------------------------------------------------------

    async def _on_notice(self, topic: str, payload: str) -> None:
        if topic != self._topics["publication"]:
            self._on_other(topic, payload)
            return
        notice = read_notice(payload)
        if notice is None:
            logger.warning("ignored an unreadable publication notice: %r", payload[:200])
            return
        await self._receive(notice.channel, notice.position, notice.publication)

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
            for channel in (list(self._states) if channels is None else channels)
            if (state := self._states.get(channel)) is not None and state.last is not None
        }
        if not states:
            return
        held = [state.last for state in states.values() if state.last is not None]
        params = ([*states], [p.epoch for p in held], [p.offset for p in held])
        async with self._pool().connection() as conn:
            rows = await (await conn.execute(self._catch_up_sql, params)).fetchall()
        for row in rows:
            channel = ChannelName(str(row[0]))
            state = states[channel]
            if self._states.get(channel) is not state:
                continue  # unsubscribed meanwhile
            publication = publication_of(channel, str(row[1]), row[2:])
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
