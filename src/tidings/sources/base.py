"""What a source is, what it publishes through, and what it counts.

No I/O. A source reads publications from outside the node (a table, a topic) and hands
each to a ``SourcePublisher`` with an idempotency key derived from where it read it
(``source:<name>:<cursor>``), so that publishing the same record twice, after a crash
between the publish and the saving of the source's own cursor, stores it once. The
publisher is the node's own publish path: it applies the namespace checks and size
limits every publish gets, refusing a publication that can never be made with
``SourceRowRefused`` (the source skips it and counts it with ``count_skipped``), and
raising ``BrokerError`` when the broker failed (the source retries with the same key).

Counting: the publisher counts each new publication (``tidings_source_published_total``);
a source counts each record it skips (``tidings_source_skipped_total``) with
``count_skipped``, whether the publisher refused it or the source itself could not make
a publication of it. The counts are per process and read at scrape time by every
node's ``/metrics`` (server/metrics.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Final, Protocol

from tidings.brokers.base import PublishResult
from tidings.core.channel import ChannelName
from tidings.errors import TidingsError

# Why a record was skipped: the label values of tidings_source_skipped_total.
SKIP_INVALID_CHANNEL: Final = "invalid_channel"  # the channel name is not a valid one
SKIP_TOO_LARGE: Final = "too_large"  # the data is over the namespace's max_data_size
SKIP_NULL_COLUMN: Final = "null_column"  # a column of the channel template is NULL
SKIP_INVALID_DATA: Final = "invalid_data"  # the record cannot be made JSON data


class SourceRowRefused(TidingsError):
    """The publication itself is not acceptable (an invalid channel name, data over the
    namespace's size limit): publishing it again would fail again, so skip it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SourcePublisher(Protocol):
    """Where a source publishes: the node's publish path."""

    async def publish(self, channel: ChannelName, data: bytes, *, key: str) -> PublishResult:
        """Publish ``data`` (JSON text) in ``channel`` through the node's broker, with
        the idempotency key ``key``: the same key twice in a channel is stored once.

        Raises:
            SourceRowRefused: the publication is not acceptable (channel name, size,
                not JSON); skip it and count it.
            BrokerError: the broker failed; retry with the same key, with backoff.
        """
        ...


class Source(Protocol):
    """A feed of publications from outside the node, run by the node (``runner``).

    A kind's class is also made with ``Class.from_settings(name, table)`` (the
    ``[[sources]]`` table, ``name`` and ``kind`` removed), which checks the settings
    without I/O and raises ``ConfigError`` with one line for a bad one.
    """

    @property
    def name(self) -> str:
        """The source's name (its ``name`` setting; labels its metrics and keys)."""
        ...

    async def check(self) -> None:
        """Check, once at node start, that what the source reads exists.

        Raises:
            ConfigError: one line naming what is missing (a table, a column, a topic)
                or unreachable; the node does not start.
        """
        ...

    async def run(self, publisher: SourcePublisher) -> None:
        """Publish until cancelled, handling reconnects and retries itself."""
        ...


class SourceKindClass(Protocol):
    """A source kind's class, as the registry makes it."""

    def from_settings(self, name: str, table: Mapping[str, object]) -> Source:
        """Return the source ``name`` of ``table``'s settings (raises ``ConfigError``)."""
        ...


class SourceCounters:
    """Publications and skipped records of every source in this process."""

    def __init__(self) -> None:
        self.published: Counter[str] = Counter()
        self.skipped: Counter[tuple[str, str]] = Counter()

    def count_published(self, source: str) -> None:
        """One new publication of ``source`` (the publisher calls this)."""
        self.published[source] += 1

    def count_skipped(self, source: str, reason: str) -> None:
        """One record of ``source`` skipped for ``reason`` (a ``SKIP_*`` value)."""
        self.skipped[source, reason] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Return copies of the published and skipped counts."""
        return dict(self.published), dict(self.skipped)


SOURCE_COUNTERS: Final = SourceCounters()


def count_skipped(source: str, reason: str) -> None:
    """Count one record of ``source`` skipped for ``reason`` (a ``SKIP_*`` value)."""
    SOURCE_COUNTERS.count_skipped(source, reason)


def count_published(source: str) -> None:
    """Count one new publication of ``source`` (``NodePublisher`` does this)."""
    SOURCE_COUNTERS.count_published(source)
