"""Where and how to reach Redis: the broker URL, read once (``RedisTarget``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidings.brokers.redis_scripts import DEFAULT_PREFIX
from tidings.errors import ConfigError

CLUSTER_SCHEME: Final = "redis-cluster"


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
        topic, and ``trust_restarts`` (``yes`` or ``no``, the default: see the module
        docstring, "Rollbacks") are ours; the others go to redis-py (``socket_timeout``,
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
