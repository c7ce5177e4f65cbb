"""The hub: this process's subscriptions and the fan-out of publications to them."""

from tidings.hub.hub import Hub, SubscribeResult
from tidings.hub.registry import Subscriber
from tidings.hub.sessions import Session, SessionRegistry

__all__ = ["Hub", "Session", "SessionRegistry", "SubscribeResult", "Subscriber"]
