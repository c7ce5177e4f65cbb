"""The node's publish path as sources see it (sources/publisher.py): what is refused for
good (``SourceRowRefused``), what is a broker failure to retry (``BrokerError``), and
what is counted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tidings.brokers.base import PublishResult
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.publication import ClientInfo
from tidings.errors import BrokerError, BrokerUnavailable
from tidings.hub.hub import Hub
from tidings.sources.base import SOURCE_COUNTERS, SourceRowRefused
from tidings.sources.publisher import NodePublisher

NAMESPACES = Namespaces({NamespaceName("small"): NamespaceOptions(max_data_bytes=10)})


class DownBroker(MemoryBroker):
    """A memory broker whose backend is unreachable while ``down``."""

    down = False

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        if self.down:
            raise BrokerUnavailable("the backend does not answer")
        return await super().publish(channel, data, key=key, info=info)


@pytest.fixture
async def broker() -> AsyncIterator[DownBroker]:
    broker = DownBroker(NAMESPACES)
    hub = Hub(broker)
    await hub.start()
    try:
        yield broker
    finally:
        await hub.close()


def publisher_of(broker: DownBroker, source: str) -> NodePublisher:
    hub = Hub(broker)
    return NodePublisher(source, lambda c, d, k: hub.publish(c, d, key=k), NAMESPACES)


async def test_a_key_publishes_once_and_only_new_publications_are_counted(
    broker: DownBroker,
) -> None:
    publisher = publisher_of(broker, "counted")
    first = await publisher.publish(ChannelName("room:1"), b'{"a": 1}', key="source:counted:1")
    again = await publisher.publish(ChannelName("room:1"), b'{"a": 1}', key="source:counted:1")
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.position == first.position
    assert SOURCE_COUNTERS.snapshot()[0]["counted"] == 1


@pytest.mark.parametrize(
    ("channel", "data", "reason"),
    [
        ("room 1", b"{}", "invalid_channel"),
        ("", b"{}", "invalid_channel"),
        ("small:1", b'"more than ten bytes"', "too_large"),
        ("room:1", b"{not json", "invalid_data"),
    ],
)
async def test_a_publication_that_can_never_be_made_is_refused_with_its_reason(
    broker: DownBroker, channel: str, data: bytes, reason: str
) -> None:
    with pytest.raises(SourceRowRefused) as caught:
        await publisher_of(broker, "refused").publish(ChannelName(channel), data, key="k")
    assert caught.value.reason == reason


async def test_a_broker_failure_is_a_broker_error_to_retry(broker: DownBroker) -> None:
    broker.down = True
    publisher = publisher_of(broker, "retried")
    with pytest.raises(BrokerError):
        await publisher.publish(ChannelName("room:1"), b"{}", key="source:retried:1")
    broker.down = False
    result = await publisher.publish(ChannelName("room:1"), b"{}", key="source:retried:1")
    assert not result.duplicate
