"""Presence for the PostgreSQL broker (``PresenceStore``): a ``presence`` table of
``(channel, client) -> user, node``, and the ``nodes`` table of live nodes. I/O with
psycopg, through the broker's pool.

An entry is listed while its node lives: ``presence`` reads join ``nodes`` and keep
the entries of nodes whose ``expires_at`` is still ahead (the database's clock, so
nodes' clocks do not matter). Each node renews its own row every ``refresh_s`` (the
broker's timer, ``renew_node``), so a live node's entries never expire, and those of a
node that died drop out ``lifetime_s`` after its last renewal, without a leave event;
the broker's trim deletes them later. Renewing costs one row per node, whatever the
number of its clients.

A join or leave is told to the other nodes in the same transaction as the change:
NOTIFY on the presence topic (for listening nodes) and a row in ``node_events`` (for
pure-pull nodes, ``postgres_events``). Both are sent at commit, in commit order, so a
node's changes reach the others in the order it made them. The receiver drops its own
node's and those of channels it is not subscribed to.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, Literal

import msgspec
import psycopg
from psycopg_pool import AsyncConnectionPool

from tidings.brokers.base import PresenceChange, PresenceHandler
from tidings.brokers.postgres_schema import in_schema
from tidings.core.channel import ChannelName
from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

PRESENCE_LIFETIME_S: Final = 30.0
PRESENCE_REFRESH_S: Final = 10.0

_RENEW_NODE: Final = """
    INSERT INTO {schema}.nodes VALUES (%(node)s, now() + %(lifetime)s * interval '1 second')
    ON CONFLICT (node) DO UPDATE SET expires_at = excluded.expires_at
"""
_JOIN: Final = """
    INSERT INTO {schema}.presence VALUES (%(channel)s, %(client)s, %(user)s, %(node)s)
    ON CONFLICT (channel, client) DO UPDATE SET "user" = excluded."user", node = excluded.node
"""
_LEAVE: Final = """
    DELETE FROM {schema}.presence WHERE channel = %(channel)s AND client = %(client)s
    RETURNING "user"
"""
_TELL: Final = """
    WITH sent AS (SELECT pg_notify(%(topic)s, %(payload)s))
    INSERT INTO {schema}.node_events (topic, payload) SELECT %(topic)s, %(payload)s FROM sent
"""
_READ: Final = """
    SELECT p.client, p."user" FROM {schema}.presence p JOIN {schema}.nodes n USING (node)
    WHERE p.channel = %s AND n.expires_at > now()
"""


class _Frame(msgspec.Struct, frozen=True):
    kind: str
    channel: str
    client: str
    user: str
    node: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Frame).decode


class PostgresPresence:
    """``PresenceStore`` of the PostgreSQL broker; see the module docstring."""

    __slots__ = ("_is_subscribed", "_on_change", "_pool", "_schema", "_topic", "lifetime_s", "node")

    def __init__(
        self,
        schema: str,
        topic: str,
        node: str,
        pool: Callable[[], AsyncConnectionPool],
        is_subscribed: Callable[[str], bool],
        *,
        lifetime_s: float = PRESENCE_LIFETIME_S,
    ) -> None:
        self._schema = schema
        self._topic = topic
        self.node = node
        self._pool = pool
        self._is_subscribed = is_subscribed
        self.lifetime_s = lifetime_s
        self._on_change: PresenceHandler | None = None

    def listen(self, on_change: PresenceHandler) -> None:
        """Hand each presence change made on another node to ``on_change`` from now on."""
        self._on_change = on_change

    async def renew_node(self, conn: psycopg.AsyncConnection[tuple[object, ...]]) -> None:
        """Push this node's ``expires_at`` a lifetime ahead (in ``conn``'s transaction)."""
        await conn.execute(
            in_schema(_RENEW_NODE, self._schema), {"node": self.node, "lifetime": self.lifetime_s}
        )

    async def join(self, channel: ChannelName, client_id: str, user: str) -> None:
        """List ``client_id`` in ``channel`` and tell the other nodes, in one transaction.

        Raises:
            BrokerError: PostgreSQL failed; the client may or may not be listed.
        """
        entry = {"channel": channel, "client": client_id, "user": user, "node": self.node}
        try:
            async with self._pool().connection() as conn, conn.transaction():
                await self.renew_node(conn)  # a node's entries count while its row lives
                await conn.execute(in_schema(_JOIN, self._schema), entry)
                await self._tell(conn, _Frame("join", channel, client_id, user, self.node))
        except psycopg.Error as exc:
            raise BrokerError(f"joining {channel} failed: {exc}") from exc

    async def leave(self, channel: ChannelName, client_id: str) -> None:
        """Remove ``client_id`` from ``channel`` and tell the other nodes; idempotent.

        Raises:
            BrokerError: PostgreSQL failed; an entry left behind expires with its node.
        """
        try:
            async with self._pool().connection() as conn, conn.transaction():
                cursor = await conn.execute(
                    in_schema(_LEAVE, self._schema), {"channel": channel, "client": client_id}
                )
                row = await cursor.fetchone()
                if row is not None:
                    frame = _Frame("leave", channel, client_id, str(row[0]), self.node)
                    await self._tell(conn, frame)
        except psycopg.Error as exc:
            raise BrokerError(f"leaving {channel} failed: {exc}") from exc

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return ``{client_id: user}`` of the clients in ``channel`` on every live node.

        Raises:
            BrokerError: PostgreSQL failed.
        """
        try:
            async with self._pool().connection() as conn:
                cursor = await conn.execute(in_schema(_READ, self._schema), [channel])
                rows = await cursor.fetchall()
        except psycopg.Error as exc:
            raise BrokerError(f"reading the presence of {channel} failed: {exc}") from exc
        return {str(client): str(user) for client, user in rows}

    async def _tell(self, conn: psycopg.AsyncConnection[tuple[object, ...]], frame: _Frame) -> None:
        payload = _encode(frame).decode()
        await conn.execute(
            in_schema(_TELL, self._schema), {"topic": self._topic, "payload": payload}
        )

    def receive(self, payload: str) -> None:
        """Hand a change told by another node to the listener, if it is one for us."""
        try:
            frame = _decode(payload)
        except (msgspec.ValidationError, msgspec.DecodeError):
            logger.warning("ignored an unreadable presence change: %r", payload[:200])
            return
        handler = self._on_change
        if frame.node == self.node or handler is None or not self._is_subscribed(frame.channel):
            return
        if frame.kind not in ("join", "leave"):
            return  # a newer node's kind of change, unknown here
        kind: Literal["join", "leave"] = "join" if frame.kind == "join" else "leave"
        try:
            handler(PresenceChange(kind, ChannelName(frame.channel), frame.client, frame.user))
        except Exception:  # a faulty handler must not stop the listener
            logger.exception("presence handler failed on %r", frame)
