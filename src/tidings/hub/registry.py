"""Which local subscribers hold which channels: plain synchronous bookkeeping. No I/O.

A ``Subscription`` is one subscriber's hold on one channel, with the position it has
reached. While its subscribe is still reading history, it is *pending*: live
publications are queued on it instead of delivered, and the hub merges them after
the history by offset (see ``hub.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.wire import EncodedPublication, encode_json


class Subscriber(Protocol):
    """A client session as the hub sees it: an identity and places to write to.

    ``deliver`` and ``deliver_presence`` must not block: they queue pre-encoded bytes
    on the connection (and may close it, if its outbound buffer is full).
    """

    @property
    def client_id(self) -> str:
        """The connection's id, unique on this node."""
        ...

    @property
    def user(self) -> str:
        """The authenticated user id, ``""`` if anonymous."""
        ...

    @property
    def clients(self) -> int:
        """How many clients this subscriber stands for in the node's counts (1 for a
        connection; a poll watch counts the long polls waiting on it, maybe none)."""
        ...

    @property
    def is_relay(self) -> bool:
        """Whether this subscriber is a relay's link: it is delivered to first, since
        its own subscribers wait for it (a relay level adds a hop, not a fan-out)."""
        ...

    def deliver(self, publication: EncodedPublication) -> None:
        """Queue a publication of a subscribed channel."""
        ...

    def deliver_presence(self, event: PresenceEvent) -> None:
        """Queue a join or leave event of a subscribed channel."""
        ...

    def report_gap(self, channel: ChannelName) -> None:
        """The broker lost publications of ``channel`` after this subscriber's position:
        make the client resume from its position (it will hear ``recovered: false``)."""
        ...


class PresenceEvent:
    """A client joined or left a channel; its WebSocket text is encoded once, on first use."""

    __slots__ = ("_websocket", "channel", "client", "kind", "user")

    def __init__(self, kind: str, channel: ChannelName, client: str, user: str) -> None:
        self.kind = kind
        self.channel = channel
        self.client = client
        self.user = user
        self._websocket: str | None = None

    @property
    def websocket(self) -> str:
        """The text of the WebSocket ``join``/``leave`` push (docs/protocol.md §3)."""
        if self._websocket is None:
            self._websocket = encode_json(
                {
                    "push": self.kind,
                    "channel": self.channel,
                    "client": self.client,
                    "user": self.user,
                }
            ).decode()
        return self._websocket


class Subscription:
    """One subscriber's hold on one channel and the position it has been given."""

    __slots__ = ("channel", "pending", "position", "subscriber")

    def __init__(self, channel: ChannelName, subscriber: Subscriber) -> None:
        self.channel = channel
        self.subscriber = subscriber
        self.position = Position("", 0)  # set when it goes live
        # Live publications that arrived while the subscribe read history; None once live.
        self.pending: list[Publication] | None = []


class SubscriptionRegistry:
    """Channels and their local subscriptions."""

    __slots__ = ("_by_channel",)

    def __init__(self) -> None:
        self._by_channel: dict[ChannelName, dict[Subscriber, Subscription]] = {}

    def add(self, channel: ChannelName, subscriber: Subscriber) -> Subscription | None:
        """Add a pending subscription; ``None`` if ``subscriber`` already holds ``channel``."""
        subscriptions = self._by_channel.setdefault(channel, {})
        if subscriber in subscriptions:
            return None
        subscription = Subscription(channel, subscriber)
        if subscriber.is_relay and subscriptions:
            # Relays first in the fan-out (dicts keep insertion order); relays are few,
            # so rebuilding the channel's dict once per relay costs little.
            self._by_channel[channel] = {subscriber: subscription, **subscriptions}
        else:
            subscriptions[subscriber] = subscription
        return subscription

    def remove(self, channel: ChannelName, subscriber: Subscriber) -> Subscription | None:
        """Remove and return ``subscriber``'s subscription to ``channel``, if any."""
        subscriptions = self._by_channel.get(channel)
        if subscriptions is None:
            return None
        subscription = subscriptions.pop(subscriber, None)
        if not subscriptions:
            del self._by_channel[channel]
        return subscription

    def subscriptions(self, channel: ChannelName) -> dict[Subscriber, Subscription] | None:
        """Return the subscriptions to ``channel`` (not a copy), or ``None`` if there are none."""
        return self._by_channel.get(channel)

    def has_subscribers(self, channel: ChannelName) -> bool:
        """Whether any local subscriber holds ``channel``."""
        return channel in self._by_channel

    def counts(self) -> Iterator[tuple[ChannelName, int]]:
        """Yield each channel with the number of clients its local subscribers stand for
        (channels held only by subscribers that stand for none are left out)."""
        for channel, subscriptions in self._by_channel.items():
            clients = sum(
                subscription.subscriber.clients for subscription in subscriptions.values()
            )
            if clients:
                yield channel, clients
