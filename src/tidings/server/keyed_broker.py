"""The broker as the hub sees it on a node with an application's key handler
(``server.key_ownership``): every ``publish``, ``history`` and ``subscribe`` first
passes ``KeyOwnership``'s door, which gains the channel's key if this node has not yet
(awaiting the handler's ``gained``), and the node's broker subscriptions are counted per
key, so a key with local subscribers never idles out. Delegates everything else. A
request of a key held already awaits nothing more than the broker's own call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.brokers.base import Broker, HistoryRead, PublicationHandler, PublishResult
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position

if TYPE_CHECKING:  # key_ownership makes the KeyedBroker: no import cycle at run time
    from tidings.server.key_ownership import KeyOwnership


class KeyedBroker:
    """A ``Broker`` whose every serving call first passes ``KeyOwnership.serve``, and
    whose broker subscriptions are counted per key (see the module docstring)."""

    def __init__(self, broker: Broker, keys: KeyOwnership) -> None:
        self.inner = broker
        self._keys = keys

    async def start(self, on_publication: PublicationHandler) -> None:
        """Start the broker (see ``Broker.start``)."""
        await self.inner.start(on_publication)

    async def close(self) -> None:
        """Close the broker."""
        await self.inner.close()

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish, once ``channel``'s key is gained."""
        if not self._keys.is_ready_to_serve(channel):  # the common case awaits nothing more
            await self._keys.serve(channel)
        return await self.inner.publish(channel, data, key=key, info=info)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read history, once ``channel``'s key is gained."""
        if not self._keys.is_ready_to_serve(channel):
            await self._keys.serve(channel)
        return await self.inner.history(channel, since, limit)

    async def subscribe(self, channel: ChannelName) -> None:
        """Subscribe the node to ``channel``, once its key is gained."""
        await self._keys.serve(channel)
        await self.inner.subscribe(channel)
        self._keys.subscribed(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Unsubscribe the node from ``channel``."""
        self._keys.unsubscribed(channel)
        await self.inner.unsubscribe(channel)

    async def is_ready(self) -> bool:
        """Whether the broker is reachable."""
        return await self.inner.is_ready()
