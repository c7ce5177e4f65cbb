"""The Python client of tidings."""

from tidings.client.backoff import Backoff
from tidings.client.events import Event, GapNotice
from tidings.client.websocket import WebSocketSubscription

__all__ = ["Backoff", "Event", "GapNotice", "WebSocketSubscription"]
