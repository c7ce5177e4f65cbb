"""Choosing a broker from configuration. No I/O.

Each backend module is imported only when chosen, so a backend's optional dependency
(redis, nats, asyncpg) is needed only by the nodes that use it.
"""

from __future__ import annotations

from pathlib import Path

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces


def create_broker(data: str | Path | None, namespaces: Namespaces, dedupe: DedupeOptions) -> Broker:
    """Return the sqlite broker keeping its files in ``data``, or the memory broker."""
    if data is not None:
        from tidings.brokers.sqlite import SqliteBroker  # noqa: PLC0415  (see module docstring)

        return SqliteBroker(data, namespaces, dedupe=dedupe)
    return MemoryBroker(namespaces, dedupe=dedupe)
