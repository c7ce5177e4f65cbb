"""What a source is and what it publishes through (a stand-in of the sources framework's
interface, kept to exactly its names so that a source type-checks against it).

No I/O here.
"""

from __future__ import annotations

from typing import Protocol

from tidings.brokers.base import PublishResult
from tidings.core.channel import ChannelName


class SourceRowRefused(Exception):
    """The publication itself is not acceptable (bad channel, data too large)."""


class SourcePublisher(Protocol):
    """Publishes through the node's broker."""

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        """Publish ``data`` in ``channel`` with idempotency key ``key``.

        Raises:
            BrokerError: the broker failed; retry with the same key, with backoff.
            SourceRowRefused: the publication is not acceptable; skip it and count it.
        """
        ...


class Source(Protocol):
    """Feeds publications from outside into the node's broker."""

    @property
    def name(self) -> str:
        """The source's name, as in its ``[[sources]]`` table."""
        ...

    async def check(self) -> None:
        """At node start: raise ``ConfigError`` naming what is missing."""
        ...

    async def run(self, publisher: SourcePublisher) -> None:
        """Publish through ``publisher`` until cancelled."""
        ...


def count_skipped(source: str, reason: str) -> None:
    """Count a record ``source`` skipped (``tidings_source_skipped_total{source,reason}``)."""


def count_published(source: str) -> None:
    """Count a publication ``source`` made (``tidings_source_published_total{source}``)."""
