"""The PostgreSQL broker's trim: deleting what no reader may be given any more. I/O with
psycopg, on one pooled connection, from the broker's upkeep timer.

Reads already judge history by the namespace's size and ttl (``postgres.py``), so the
trim is about space, not correctness, and may lag. What goes:

* publications beyond their namespace's history size (offset <= head - size) or older
  than its ttl (by the nodes' clock, as their timestamps are);
* idempotency keys older than the dedupe window;
* channel rows never published to (made by a read) older than their ttl: a reader
  holding such a channel's ``(epoch, 0)`` is then told ``Gap``, as after Redis lets
  such a head expire;
* presence entries of dead nodes, dead nodes, and node events older than
  ``EVENT_LIFETIME_S`` (a pure-pull node reads them within its poll interval).

Each delete takes at most ``TRIM_BATCH`` rows, picked with ``FOR UPDATE SKIP LOCKED``
and committed on its own, then yields: no table lock, no long transaction, and rows a
publisher holds are skipped, so publishing never waits on the trim. Many nodes trimming
at once only share the work.
"""

from __future__ import annotations

from typing import Final, LiteralString

from psycopg import AsyncConnection

from tidings.brokers.postgres_schema import in_schema
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces

TRIM_BATCH: Final = 1000
EVENT_LIFETIME_S: Final = 300

# Options per namespace as arrays; channels of a namespace not listed take the default's.
_OPTIONS: Final = """
    opts AS (
        SELECT * FROM unnest(%(names)s::text[], %(sizes)s::bigint[], %(ttls)s::bigint[])
        AS o(namespace, size, ttl_ms)
    )
"""
_PUBLICATIONS: Final[LiteralString] = (
    "WITH"
    + _OPTIONS
    + """,
    victims AS (
        SELECT p.channel, p."offset" FROM {schema}.publications p
        JOIN {schema}.channels c ON c.channel = p.channel
        LEFT JOIN opts o ON o.namespace = c.namespace
        WHERE p."offset" <= c.head - coalesce(o.size, %(size)s)
           OR p.ts_ms < %(now_ms)s - coalesce(o.ttl_ms, %(ttl_ms)s)
        LIMIT %(batch)s
        FOR UPDATE OF p SKIP LOCKED
    )
    DELETE FROM {schema}.publications p USING victims v
    WHERE p.channel = v.channel AND p."offset" = v."offset"
"""
)
_UNPUBLISHED_CHANNELS: Final[LiteralString] = (
    "WITH"
    + _OPTIONS
    + """,
    victims AS (
        SELECT c.channel FROM {schema}.channels c LEFT JOIN opts o ON o.namespace = c.namespace
        WHERE c.head = 0 AND c.created_ms < %(now_ms)s - coalesce(o.ttl_ms, %(ttl_ms)s)
        LIMIT %(batch)s
        FOR UPDATE OF c SKIP LOCKED
    )
    DELETE FROM {schema}.channels c USING victims v WHERE c.channel = v.channel AND c.head = 0
"""
)
_KEYS: Final = """
    DELETE FROM {schema}.idempotency_keys WHERE ctid IN (
        SELECT ctid FROM {schema}.idempotency_keys WHERE ts_ms < %(now_ms)s - %(window_ms)s
        LIMIT %(batch)s FOR UPDATE SKIP LOCKED
    )
"""
_DEAD_PRESENCE: Final = """
    DELETE FROM {schema}.presence WHERE ctid IN (
        SELECT p.ctid FROM {schema}.presence p LEFT JOIN {schema}.nodes n USING (node)
        WHERE n.node IS NULL OR n.expires_at < now()
        LIMIT %(batch)s FOR UPDATE OF p SKIP LOCKED
    )
"""
_DEAD_NODES: Final = """
    DELETE FROM {schema}.nodes WHERE expires_at < now() - interval '1 minute'
"""
_OLD_EVENTS: Final = """
    DELETE FROM {schema}.node_events WHERE ctid IN (
        SELECT ctid FROM {schema}.node_events
        WHERE created_at < now() - %(event_lifetime_s)s * interval '1 second'
        LIMIT %(batch)s FOR UPDATE SKIP LOCKED
    )
"""
# A channel without a namespace, so that ``options_for`` gives the default namespace's.
_NO_NAMESPACE: Final = ChannelName("-")
_BATCHED: Final = (_PUBLICATIONS, _UNPUBLISHED_CHANNELS, _KEYS, _DEAD_PRESENCE, _OLD_EVENTS)


async def trim(
    conn: AsyncConnection[tuple[object, ...]],
    schema: str,
    namespaces: Namespaces,
    dedupe: DedupeOptions,
    now_ms: int,
) -> int:
    """Delete, batch after batch, what the module docstring lists; ``conn`` must be in
    autocommit mode (each batch commits alone).

    Returns:
        How many rows were deleted.

    Raises:
        psycopg.Error: the database failed; the batches done stay done.
    """
    named = namespaces.items()
    default = namespaces.options_for(_NO_NAMESPACE).history
    params: dict[str, object] = {
        "names": [str(name) for name, _ in named],
        "sizes": [options.history.size for _, options in named],
        "ttls": [options.history.ttl_ms for _, options in named],
        "size": default.size,
        "ttl_ms": default.ttl_ms,
        "now_ms": now_ms,
        "window_ms": dedupe.window_ms,
        "batch": TRIM_BATCH,
        "event_lifetime_s": EVENT_LIFETIME_S,
    }
    deleted = 0
    for template in _BATCHED:
        statement = in_schema(template, schema)
        while True:
            cursor = await conn.execute(statement, params)
            deleted += max(0, cursor.rowcount)
            if cursor.rowcount < TRIM_BATCH:
                break
    await conn.execute(in_schema(_DEAD_NODES, schema))
    return deleted
