"""Where and how to reach Redis: the broker URL, read once (``RedisTarget``), and the
redis-py client for it (``make_client``)."""

from __future__ import annotations

from collections.abc import Mapping
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
    batch: bool = True

    @classmethod
    def parse(cls, url: str, options: Mapping[str, object] | None = None) -> RedisTarget:
        """Read a ``redis://``, ``rediss://``, ``unix://`` or ``redis-cluster://`` URL,
        and the broker's table of the configuration file (``options``).

        Our settings, ``prefix`` (default ``tidings``), which starts every key and topic,
        ``trust_restarts`` (default no: see the module docstring, "Rollbacks") and
        ``batch`` (default yes: scripts started together share one pipeline, see
        ``redis_runner``), may be in either; the URL's query wins. The URL's other query
        options go to redis-py (``socket_timeout``, ``max_connections``...).

        Raises:
            ConfigError: the prefix contains ``{`` or ``}`` (they would break hash tags),
                ``trust_restarts`` or ``batch`` is not yes or no, or ``options`` has
                another key.
        """
        prefix, trust_restarts, batch = _file_settings(options or {})
        parts = urlsplit(url)
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                prefix = value
            elif name in ("trust_restarts", "batch"):
                if value not in ("yes", "no"):
                    raise ConfigError(f"{name} must be yes or no, got {value!r}")
                if name == "batch":
                    batch = value == "yes"
                else:
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
        return cls(rebuilt, cluster, prefix, trust_restarts, batch)


# The settings of ``[brokers.redis]``; the URL's query may set them too.
FILE_SETTINGS: Final = ("prefix", "trust_restarts", "batch")


def _file_settings(options: Mapping[str, object]) -> tuple[str, bool, bool]:
    """Return ``prefix``, ``trust_restarts`` and ``batch`` from the ``[brokers.redis]``
    table.

    Raises:
        ConfigError: a key that is not one of ``FILE_SETTINGS``, or a value of the
            wrong type.
    """
    for name in options:
        if name not in FILE_SETTINGS:
            raise ConfigError(
                f"brokers.redis: unknown setting {name!r}; known: {sorted(FILE_SETTINGS)}"
            )
    prefix = options.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str):
        raise ConfigError(f"brokers.redis.prefix must be a string, got {prefix!r}")
    trust = _flag(options, "trust_restarts", default=False)
    return prefix, trust, _flag(options, "batch", default=True)


def _flag(options: Mapping[str, object], name: str, *, default: bool) -> bool:
    value = options.get(name, default)
    if isinstance(value, str) and value.lower() in ("yes", "true", "no", "false"):
        value = value.lower() in ("yes", "true")  # from the environment, as text
    if not isinstance(value, bool):
        raise ConfigError(f"brokers.redis.{name} must be true or false, got {value!r}")
    return value


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
