"""A ``SourcePublisher`` over a real broker, as the node gives one to its sources: the
data size rule of the channel's namespace, then the broker's publish with the source's
idempotency key. A refused publication raises ``SourceRowRefused``; a broker failure
``BrokerError``, as the broker raised it.
"""

from __future__ import annotations

from tidings.brokers.base import Broker, PublishResult
from tidings.core.channel import ChannelName
from tidings.core.commands import publication_data
from tidings.core.namespace import Namespaces
from tidings.errors import MessageTooLarge
from tidings.sources.base import SKIP_TOO_LARGE, SourceRowRefused


class BrokerPublisher:
    """Publishes a source's records through ``broker``."""

    def __init__(self, broker: Broker, namespaces: Namespaces) -> None:
        self._broker = broker
        self._namespaces = namespaces

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        """Publish ``data`` in ``channel`` with idempotency key ``key``.

        Raises:
            SourceRowRefused: ``data`` is over the namespace's size limit.
            BrokerError: the broker failed.
        """
        limit = self._namespaces.options_for(channel).max_data_bytes
        try:
            checked = publication_data(data, limit)
        except MessageTooLarge as error:
            raise SourceRowRefused(SKIP_TOO_LARGE, error.message) from None
        return await self._broker.publish(channel, checked, key=key)
