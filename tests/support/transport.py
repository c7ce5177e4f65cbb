"""A node's ``TransportContext`` for transport tests: a real hub on a memory broker,
anonymous connections, and the limits the test gives."""

from __future__ import annotations

from typing import Any

from tidings.brokers.memory import MemoryBroker
from tidings.core.namespace import Namespaces
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.server.auth import Authenticator
from tidings.transports.context import Limits, TransportContext


async def memory_context(limits: Limits, **fields: Any) -> TransportContext:
    """Return a context on a started hub; ``fields`` override the context's others."""
    hub = Hub(MemoryBroker(Namespaces()))
    await hub.start()
    defaults: dict[str, Any] = {
        "sessions": SessionRegistry(100),
        "authenticator": Authenticator(None),
        "namespaces": Namespaces(),
        "ping_interval_s": 25.0,
    }
    return TransportContext(hub=hub, limits=limits, **{**defaults, **fields})
