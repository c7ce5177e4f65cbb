"""Choosing a broker from configuration. No I/O.

Each backend module is imported only when chosen, so a backend's optional dependency
(redis, nats, asyncpg) is needed only by the nodes that use it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.errors import ConfigError

REDIS_SCHEMES: Final = ("redis://", "rediss://", "unix://")
REDIS_CLUSTER_SCHEME: Final = "redis-cluster://"


def create_broker(
    broker: str | None,
    data: str | Path | None,
    namespaces: Namespaces,
    dedupe: DedupeOptions,
    *,
    sqlite_durability: str = "full",
) -> Broker:
    """Return the broker named by ``broker`` (a URL) or, without one, by ``data``.

    ``redis://host:port/db`` (also ``rediss://``, ``unix://``) is the Redis broker,
    ``redis-cluster://host:port`` the Redis Cluster one; ``memory`` or nothing is the
    memory broker, or the sqlite broker keeping its files in ``data`` if given, with
    ``sqlite_durability`` (``full`` or ``fast``, see ``brokers.sqlite``).

    Raises:
        ConfigError: an unknown broker URL, or ``data`` given with a remote broker.
    """
    if broker in (None, "", "memory"):
        if data is None:
            return MemoryBroker(namespaces, dedupe=dedupe)
        from tidings.brokers.sqlite import (  # noqa: PLC0415  (see module docstring)
            DURABILITIES,
            SqliteBroker,
        )

        for durability in DURABILITIES:
            if durability == sqlite_durability:
                return SqliteBroker(data, namespaces, dedupe=dedupe, durability=durability)
        raise ConfigError(
            f"sqlite_durability must be one of {list(DURABILITIES)}, got {sqlite_durability!r}"
        )
    assert broker is not None
    if data is not None:
        raise ConfigError("data (the sqlite directory) applies only to the embedded broker")
    if broker.startswith(REDIS_SCHEMES) or broker.startswith(REDIS_CLUSTER_SCHEME):
        from tidings.brokers.redis import RedisBroker  # noqa: PLC0415  (see module docstring)

        return RedisBroker(broker, namespaces, dedupe=dedupe)
    raise ConfigError(
        f"broker {broker!r} is not one tidings knows: use memory, redis://host:port/db "
        "or redis-cluster://host:port"
    )
