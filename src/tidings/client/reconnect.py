"""How a subscription reacts to the end of a connection: the four outcomes, the server's
reconnect delay, and which transport comes next with ``transport="auto"``.

Pure (no I/O): the rules of the ``Subscription`` docstring (subscription.py), which runs
them; here they are apart from the loop, and tested on their own.
"""

from __future__ import annotations

import enum
import logging
import socket
from dataclasses import dataclass
from typing import Final

import httpx
import websockets

from tidings.client.connector import TransportName
from tidings.client.errors import TransportRefused, is_retryable
from tidings.errors import ConnectionClosed, RequestError

logger = logging.getLogger(__name__)

# A server's reconnect delay is followed up to this long (a bound on a server's mistake).
MAX_SERVER_DELAY_S: Final = 300.0

# No TCP connection to the server at all: it is down or unreachable, whatever the path,
# so this says nothing about which transport the network lets through.
_UNREACHABLE_ERRORS: Final = (
    ConnectionRefusedError,
    socket.gaierror,
    httpx.ConnectError,
    httpx.ConnectTimeout,
)
# Failures of the network or of one connection: another connection may succeed.
_NETWORK_ERRORS: Final = (
    OSError,  # reset, unreachable; ConnectionResetError for an ended SSE stream
    TimeoutError,  # a silent WebSocket, or an upgrade that never completed
    httpx.TransportError,  # httpx's read (a silent SSE stream) and protocol errors
    websockets.ConnectionClosed,
    websockets.InvalidHandshake,  # an upgrade cut short; InvalidStatus is turned into
    # TransportRefused by the connector
)


class Outcome(enum.Enum):
    STOP = "stop"
    RECONNECT = "reconnect"
    UNREACHABLE = "unreachable"
    REFUSED = "refused"


def outcome_of(exc: Exception) -> Outcome:
    """Sort what ended a connection (see the module docstring)."""
    if isinstance(exc, TransportRefused):
        # A 5xx or 429 of a proxy may pass (its backend restarting): like a dropped
        # connection, it moves ``auto`` down only while no transport is kept.
        return Outcome.RECONNECT if exc.is_retryable else Outcome.REFUSED
    if isinstance(exc, _UNREACHABLE_ERRORS):
        return Outcome.UNREACHABLE
    if isinstance(exc, ConnectionClosed):
        return Outcome.RECONNECT if exc.reconnect else Outcome.STOP
    if isinstance(exc, RequestError):
        return Outcome.RECONNECT if is_retryable(exc) else Outcome.STOP
    if isinstance(exc, _NETWORK_ERRORS):
        return Outcome.RECONNECT
    return Outcome.STOP


def server_delay_s(failure: Exception) -> float | None:
    """The reconnect delay the server gave with its ``disconnect`` (a drain spreads its
    clients' reconnects so), bounded by ``MAX_SERVER_DELAY_S``; ``None`` without one."""
    if isinstance(failure, ConnectionClosed) and failure.delay_ms is not None:
        return min(failure.delay_ms / 1000, MAX_SERVER_DELAY_S)
    return None


@dataclass(slots=True)
class TransportRoute:
    """Which transport comes next: the ``auto`` rules of the module docstring. No I/O."""

    candidates: tuple[TransportName, ...]
    auto: bool
    index: int = 0
    kept: bool = False

    @property
    def current(self) -> TransportName:
        """The transport to connect with."""
        return self.candidates[self.index]

    def receive_failure(self, outcome: Outcome, *, connected: bool) -> bool:
        """Take a connection's end (not a STOP); return whether to wait a backoff delay
        before the next connection (``False``: try the next transport at once)."""
        if not self.auto:
            return True
        if connected and not self.kept:
            logger.info("transport %s works; keeping it", self.current)
            self.kept = True
        if outcome is Outcome.REFUSED or (outcome is Outcome.RECONNECT and not self.kept):
            self.kept = False
            self.index += 1
            if self.index < len(self.candidates):
                return False
            self.index = 0
        elif outcome is Outcome.UNREACHABLE and not self.kept:
            self.index = 0  # the server is down: when it is back, start from the top
        return True
