"""Where and how to reach Redis: the broker URL, read once (``RedisTarget``), and the
redis-py client for it (``make_client``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import ConnectionPool
from redis.maint_notifications import MaintNotificationsConfig

from tidings.brokers.redis_link import NO_RETRY
from tidings.brokers.redis_scripts import DEFAULT_PREFIX
from tidings.errors import ConfigError

CLUSTER_SCHEME: Final = "redis-cluster"
DEFAULT_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where and how to reach Redis, from a broker URL."""

    url: str  # what redis-py reads: the broker URL without our own options
    cluster: bool
    prefix: str
    trust_restarts: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Read a ``redis://``, ``rediss://``, ``unix://`` or ``redis-cluster://`` URL.

        The query options ``prefix`` (default ``tidings``), which starts every key and
        topic, and ``trust_restarts`` (``yes`` or ``no``, the default: see "Rollbacks"
        in the docstring of ``redis``) are ours; the others go to redis-py (``socket_timeout``,
        ``max_connections``...).

        Raises:
            ConfigError: the prefix contains ``{`` or ``}`` (they would break hash tags),
                or ``trust_restarts`` is neither ``yes`` nor ``no``.
        """
        parts = urlsplit(url)
        prefix = DEFAULT_PREFIX
        trust_restarts = False
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                prefix = value
            elif name == "trust_restarts":
                if value not in ("yes", "no"):
                    raise ConfigError(f"trust_restarts must be yes or no, got {value!r}")
                trust_restarts = value == "yes"
            elif name == "decode_responses":
                continue  # the broker reads bytes
            else:
                kept.append((name, value))
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"prefix must be non-empty and without braces, got {prefix!r}")
        cluster = parts.scheme == CLUSTER_SCHEME
        scheme = "redis" if cluster else parts.scheme
        rebuilt = urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
        return cls(rebuilt, cluster, prefix, trust_restarts)


def without_credentials(url: str) -> str:
    """``url`` without user and password, for logs."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def make_client(target: RedisTarget) -> tuple[Redis | RedisCluster, int]:
    """Return a redis-py client of ``target`` (nothing connects yet) and the number of
    the database it uses (0 in a cluster)."""
    defaults: dict[str, Any] = {
        "socket_connect_timeout": DEFAULT_TIMEOUT_S,
        "socket_timeout": DEFAULT_TIMEOUT_S,
        "retry": NO_RETRY,  # a failed publish is reported, never silently repeated
        # Off: with them on, redis-py skips its check of pooled connections, and a
        # connection Redis closed (a restart) would fail the next command.
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }
    if target.cluster:
        return RedisCluster.from_url(target.url, **defaults), 0
    pool = ConnectionPool.from_url(target.url, **defaults)
    db = int(pool.connection_kwargs.get("db") or 0)
    return Redis.from_pool(pool), db  # closing the client closes the pool
