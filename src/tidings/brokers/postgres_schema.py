"""The PostgreSQL broker's tables, in a schema of their own, and how a node brings them
to the version it knows. I/O with psycopg, on one connection, at start.

The schema records its version in ``schema_version`` (one row). ``MIGRATIONS`` lists
the steps from nothing to ``SCHEMA_VERSION``: step *n* takes version *n - 1* to *n*,
and each runs in a transaction of its own that also records the new version, so a
node killed mid-way leaves the schema at a version it had, never half-way. Several
nodes starting at once take a session-level advisory lock (keyed by the schema's
name) around the whole upgrade: the first migrates, the others wait, then find
nothing left to do. A schema newer than this tidings knows is refused
(``SchemaTooNew``): an older node would write rows a newer one does not expect.

Steps are append-only: a released step is never edited; a change is a new step.

Tables (the publish function is the only writer of the first three):

* ``channels``: a channel's ``epoch`` (drawn when its row is first made: by its
  first publish or first read) and ``head``, the offset of its last publication.
* ``publications``: each retained publication by ``(channel, offset)``.
* ``idempotency_keys``: the offset each key got, per channel, for the dedupe window.
* ``nodes``: the live nodes, each renewing its ``expires_at``; a node past it is dead.
* ``presence``: who is in which channel, on which node; listed only while the node lives.
* ``node_events``: presence changes and node commands, for nodes that poll instead of
  listening (pure pull); read in commit order by transaction id (``postgres_events``).
"""

from __future__ import annotations

import logging
from typing import Final, LiteralString

from psycopg import AsyncConnection, sql

from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

# Each step: the statements that take the schema from the previous version to the next.
_STEP_1: Final[tuple[LiteralString, ...]] = (
    """
    CREATE TABLE {schema}.channels (
        channel text PRIMARY KEY,
        namespace text NOT NULL,
        epoch text NOT NULL,
        head bigint NOT NULL,
        created_ms bigint NOT NULL
    )
    """,
    """
    CREATE TABLE {schema}.publications (
        channel text NOT NULL,
        "offset" bigint NOT NULL,
        ts_ms bigint NOT NULL,
        data bytea NOT NULL,
        key text,
        client text,
        "user" text,
        PRIMARY KEY (channel, "offset")
    )
    """,
    """
    CREATE TABLE {schema}.idempotency_keys (
        channel text NOT NULL,
        key bytea NOT NULL, -- a client's key starts with NUL (core.dedupe): not text
        "offset" bigint NOT NULL,
        ts_ms bigint NOT NULL,
        PRIMARY KEY (channel, key)
    )
    """,
    "CREATE INDEX ON {schema}.idempotency_keys (ts_ms)",
)
# Presence, live nodes and the events pure-pull nodes read; the publish function.
_STEP_2: Final[tuple[LiteralString, ...]] = (
    "CREATE INDEX ON {schema}.publications (ts_ms)",
    """
    CREATE TABLE {schema}.nodes (
        node text PRIMARY KEY,
        expires_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE {schema}.presence (
        channel text NOT NULL,
        client text NOT NULL,
        "user" text NOT NULL,
        node text NOT NULL,
        PRIMARY KEY (channel, client)
    )
    """,
    "CREATE INDEX ON {schema}.presence (node)",
    """
    CREATE TABLE {schema}.node_events (
        txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
        id bigserial,
        topic text NOT NULL,
        payload text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (txid, id)
    )
    """,
    "CREATE INDEX ON {schema}.node_events (created_at)",
    # One call per publish: the channel's row is locked by the upsert (so concurrent
    # publishers of a channel queue there, whatever their node), the key is looked up
    # under that lock, the head moves by one and the publication is stored, and the
    # notice goes out at commit: all one transaction. See postgres.py.
    """
    CREATE FUNCTION {schema}.publish(
        p_channel text, p_namespace text, p_epoch text, p_ts_ms bigint, p_data bytea,
        p_key text, p_dedupe_key bytea, p_client text, p_user text,
        p_window_ms bigint, p_topic text, p_notice text
    ) RETURNS TABLE (epoch text, head bigint, duplicate boolean)
    LANGUAGE plpgsql AS $$
    DECLARE
        v_epoch text;
        v_head bigint;
        v_seen bigint;
    BEGIN
        IF p_dedupe_key IS NULL THEN
            INSERT INTO {schema}.channels AS c VALUES (p_channel, p_namespace, p_epoch, 1, p_ts_ms)
            ON CONFLICT (channel) DO UPDATE SET head = c.head + 1
            RETURNING c.epoch, c.head INTO v_epoch, v_head;
        ELSE
            INSERT INTO {schema}.channels AS c VALUES (p_channel, p_namespace, p_epoch, 0, p_ts_ms)
            ON CONFLICT (channel) DO UPDATE SET head = c.head
            RETURNING c.epoch, c.head INTO v_epoch, v_head;
            SELECT k."offset" INTO v_seen FROM {schema}.idempotency_keys k
            WHERE k.channel = p_channel AND k.key = p_dedupe_key
              AND k.ts_ms >= p_ts_ms - p_window_ms;
            IF FOUND THEN
                RETURN QUERY SELECT v_epoch, v_seen, true;
                RETURN;
            END IF;
            UPDATE {schema}.channels c SET head = c.head + 1 WHERE c.channel = p_channel
            RETURNING c.head INTO v_head;
            INSERT INTO {schema}.idempotency_keys AS k
            VALUES (p_channel, p_dedupe_key, v_head, p_ts_ms)
            ON CONFLICT (channel, key) DO UPDATE SET "offset" = v_head, ts_ms = p_ts_ms;
        END IF;
        INSERT INTO {schema}.publications
        VALUES (p_channel, v_head, p_ts_ms, p_data, p_key, p_client, p_user);
        PERFORM pg_notify(p_topic, v_epoch || ' ' || v_head || ' ' || p_notice);
        RETURN QUERY SELECT v_epoch, v_head, false;
    END
    $$
    """,
)
MIGRATIONS: Final = (_STEP_1, _STEP_2)
SCHEMA_VERSION: Final = len(MIGRATIONS)

_CREATE_VERSION_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS {schema}.schema_version (
        only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
        version integer NOT NULL
    )
"""
_SET_VERSION: Final = """
    INSERT INTO {schema}.schema_version (version) VALUES (%s)
    ON CONFLICT (only_row) DO UPDATE SET version = excluded.version
"""


class SchemaTooNew(BrokerError):
    """The schema was made by a newer tidings than this one."""

    def __init__(self, schema: str, version: int) -> None:
        super().__init__(
            f"PostgreSQL schema {schema!r} is at version {version}, newer than this "
            f"tidings knows ({SCHEMA_VERSION}): upgrade tidings on this node"
        )
        self.schema = schema
        self.version = version


def in_schema(template: LiteralString, schema: str) -> sql.Composed:
    """Return ``template`` with ``{schema}`` naming ``schema`` (quoted as an identifier)."""
    return sql.SQL(template).format(schema=sql.Identifier(schema))


async def migrate(
    conn: AsyncConnection[tuple[object, ...]], schema: str, *, up_to: int = SCHEMA_VERSION
) -> int:
    """Bring ``schema`` to version ``up_to`` (this tidings's, by default), creating it if
    missing; ``conn`` must be in autocommit mode.

    Returns:
        The version the schema was at before.

    Raises:
        SchemaTooNew: the schema is newer than this tidings knows.
        psycopg.Error: the database failed; steps already done stay done.
    """
    lock_name = f"tidings.schema:{schema}"
    await conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [lock_name])
    try:
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(in_schema(_CREATE_VERSION_TABLE, schema))
        cursor = await conn.execute(
            in_schema("SELECT version FROM {schema}.schema_version", schema)
        )
        row = await cursor.fetchone()
        found = 0 if row is None else int(str(row[0]))
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(schema, found)
        for version in range(found + 1, up_to + 1):
            async with conn.transaction():
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(in_schema(statement, schema))
                await conn.execute(in_schema(_SET_VERSION, schema), [version])
            logger.info("PostgreSQL schema %s upgraded to version %d", schema, version)
        return found
    finally:
        await conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", [lock_name])
