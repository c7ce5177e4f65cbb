"""The node's publish path as a source sees it (``base.SourcePublisher``).

No I/O of its own: it checks a publication as the server API does (the channel name,
the namespace's ``max_data_size``, valid JSON, on one line) and hands it to the node's
publish path: the hub, which publishes it through the broker, or, in the hashing mode,
the channel's owner, which alone sequences it (a source runs on whichever node it was
configured on, not on the owner of every channel it feeds). A publication that can
never be made becomes ``SourceRowRefused``; a broker failure or an owner out of reach
(``Unavailable``) becomes ``BrokerError``, its cause chained.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec

from tidings.brokers.base import PublishResult
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.commands import MAX_KEY_LENGTH, publication_data
from tidings.core.dedupe import CLIENT_KEY_MARK
from tidings.core.namespace import Namespaces
from tidings.errors import BadRequest, BrokerError, MessageTooLarge, Unavailable
from tidings.sources.base import (
    SKIP_INVALID_CHANNEL,
    SKIP_INVALID_DATA,
    SKIP_TOO_LARGE,
    SourceRowRefused,
    count_published,
)

# The node's publish path for checked data: (channel, data, key) -> where it landed.
# Raises ``Unavailable`` when the publication may not have been made.
PublishPath = Callable[[ChannelName, bytes, str], Awaitable[PublishResult]]


class NodePublisher:
    """Publishes one source's publications through a node's publish path."""

    def __init__(self, source: str, publish: PublishPath, namespaces: Namespaces) -> None:
        self._source = source
        self._publish = publish
        self._namespaces = namespaces

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        """See ``base.SourcePublisher.publish``."""
        try:
            name = parse_channel(channel)
        except BadRequest as exc:
            raise SourceRowRefused(SKIP_INVALID_CHANNEL, exc.message) from None
        if CLIENT_KEY_MARK in key or not 0 < len(key) <= MAX_KEY_LENGTH:
            # The source's own mistake, not the record's: no retry would help.
            raise ValueError(f"idempotency key {key!r} is empty, too long or holds NUL")
        limit = self._namespaces.options_for(name).max_data_bytes
        try:
            checked = publication_data(data, limit)
        except MessageTooLarge as exc:
            raise SourceRowRefused(SKIP_TOO_LARGE, exc.message) from None
        try:
            msgspec.json.decode(checked)  # clients are promised JSON (docs/protocol.md §3)
        except msgspec.DecodeError as exc:
            raise SourceRowRefused(SKIP_INVALID_DATA, f"data is not JSON: {exc}") from None
        try:
            result = await self._publish(name, checked, key)
        except Unavailable as exc:
            raise BrokerError(exc.message) from exc.__cause__
        if not result.duplicate:
            count_published(self._source)
        return result
