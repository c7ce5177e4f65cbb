"""A relay broker for the broker contract suite, with an origin of its own in the test's
process: a ``TidingsApp`` on a memory broker served by the native server on a loopback
port, both sharing the test's clock, so that time the test moves (history and dedupe
windows) moves for the origin and for the relay's cache alike.

``RelayOfOrigin`` is the relay broker the suite drives; starting it starts the origin
first, and closing it stops the origin after the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Protocol

from tidings.brokers.base import PublicationHandler
from tidings.brokers.memory import MemoryBroker
from tidings.brokers.relay import RelayBroker
from tidings.clock import Clock
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.native.server import NativeServer


class BrokerSetup(Protocol):
    """What the contract suite gives a broker factory (its ``BrokerSetup``)."""

    @property
    def namespaces(self) -> Namespaces: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def dedupe(self) -> DedupeOptions: ...


def _loopback_listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    return listener


class RelayOfOrigin(RelayBroker):
    """A relay broker whose origin runs in this process; see the module docstring."""

    def __init__(self, setup: BrokerSetup) -> None:
        self._listener = _loopback_listener()
        port = self._listener.getsockname()[1]
        origin_broker = MemoryBroker(setup.namespaces, clock=setup.clock, dedupe=setup.dedupe)
        self._origin = NativeServer(TidingsApp(Settings(), broker=origin_broker))
        self._serving: asyncio.Task[None] | None = None
        super().__init__(f"relay+ws://127.0.0.1:{port}", setup.namespaces, clock=setup.clock)

    async def start(self, on_publication: PublicationHandler) -> None:
        """Serve the origin, then start the relay (which waits for its link)."""
        self._serving = asyncio.create_task(
            self._origin.serve(self._listener, handle_signals=False)
        )
        await super().start(on_publication)

    async def close(self) -> None:
        """Close the relay, then stop the origin."""
        await super().close()
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
        self._listener.close()


def make_relay_broker(setup: BrokerSetup) -> RelayBroker:
    """A relay of an origin of its own (channels are unique per test: no cleanup)."""
    return RelayOfOrigin(setup)
