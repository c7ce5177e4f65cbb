"""The Python client of tidings: subscriptions over any transport, and the server API.

``subscribe(url, *channels, transport=...)`` yields ``Publication`` and ``GapNotice``
events, reconnecting and resuming by itself; ``ApiClient`` publishes and reads history
for the application's backend. See docs/client.md.
"""

from tidings.client.api import ApiClient, History
from tidings.client.backoff import Backoff
from tidings.client.connector import TransportName
from tidings.client.errors import (
    InternalServerError,
    ProtocolViolation,
    TooManyRedirects,
    TransportRefused,
)
from tidings.client.events import Event, GapNotice
from tidings.client.subscription import (
    Since,
    Subscription,
    TransportChoice,
    WebSocketSubscription,
    subscribe,
)
from tidings.client.tokens import Token, TokenSource

__all__ = [
    "ApiClient",
    "Backoff",
    "Event",
    "GapNotice",
    "History",
    "InternalServerError",
    "ProtocolViolation",
    "Since",
    "Subscription",
    "Token",
    "TokenSource",
    "TooManyRedirects",
    "TransportChoice",
    "TransportName",
    "TransportRefused",
    "WebSocketSubscription",
    "subscribe",
]
