"""tidings: a real-time update server and library.

Publish to channels from your backend; browsers, phones and services receive the
publications over WebSocket, Server-Sent Events or polling, in order, gap-free, and
resume where they were after a disconnect.
"""

from tidings.brokers.base import Broker, HistoryRead, PublishResult
from tidings.brokers.memory import MemoryBroker
from tidings.client import ApiClient, GapNotice, Subscription, WebSocketSubscription, subscribe
from tidings.core.channel import ChannelName
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy
from tidings.core.placement import HERE, Here, Moved
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.errors import TidingsError
from tidings.hub import Hub
from tidings.server.app import TidingsApp, create_app
from tidings.server.config import load_settings
from tidings.server.key_hooks import KeyHandler, KeyHooks
from tidings.server.key_ownership import KeyOwnership
from tidings.server.settings import Settings

__all__ = [
    "HERE",
    "ApiClient",
    "Broker",
    "ChannelName",
    "ClientInfo",
    "GapNotice",
    "Here",
    "HistoryRead",
    "Hub",
    "KeyHandler",
    "KeyHooks",
    "KeyOwnership",
    "MemoryBroker",
    "Moved",
    "NamespaceOptions",
    "Namespaces",
    "Policy",
    "Position",
    "Publication",
    "PublishResult",
    "Settings",
    "Subscription",
    "TidingsApp",
    "TidingsError",
    "WebSocketSubscription",
    "create_app",
    "load_settings",
    "subscribe",
]
