"""Refusals: what a node turned away, told once each in its log and counted for /metrics.

I/O: logging only. Every transport and the server API call ``Refusals.refused`` where
they refuse someone: an origin not allowed, a token rejected (4001), a subscription
or publication forbidden, a server API call without the right key, a slow consumer
cut, commands over the rate, a request over a limit. Each becomes one INFO line with
the reason, the client's address and what was wrong (never a token or a key: the
details passed are the server's own error messages, which hold none).

An attack must not flood the log: each reason has a token bucket (``LOG_BURST`` lines
at once, then ``LOG_RATE_PER_S``); a refusal over it is counted, not logged, and the
next line of that reason first says how many were suppressed. Counters are never
limited. Server-initiated closes are counted here too, by close code.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Literal

from tidings.core.rate import TokenBucket
from tidings.errors import ErrorCode, RequestError

logger = logging.getLogger(__name__)

RefusalReason = Literal[
    "origin", "token", "forbidden", "api_key", "slow_consumer", "rate_limit", "limit"
]
REFUSAL_REASONS: Final[tuple[RefusalReason, ...]] = (
    "origin",
    "token",
    "forbidden",
    "api_key",
    "slow_consumer",
    "rate_limit",
    "limit",
)
# How each reason reads in a log line: "refused <this> from <address>: <detail>".
_SAID: Final[dict[RefusalReason, str]] = {
    "origin": "an origin",
    "token": "a connection token",
    "forbidden": "a channel",
    "api_key": "a server API call",
    "slow_consumer": "a slow consumer",
    "rate_limit": "commands over the rate",
    "limit": "a request over a limit",
}
# The request errors that are refusals (others are mistakes, or the node's own state).
_REASON_OF_CODE: Final[dict[ErrorCode, RefusalReason]] = {
    "unauthorized": "token",
    "permission_denied": "forbidden",
    "too_many_requests": "limit",
}
LOG_BURST: Final = 20
LOG_RATE_PER_S: Final = 1.0

Peer = tuple[str, int] | None


def peer_text(peer: Peer) -> str:
    """``host:port`` of a client address (``[host]:port`` for IPv6), or ``unknown``."""
    if not peer:
        return "unknown"
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Refusals:
    """One node's refusal log and counters."""

    __slots__ = ("_buckets", "_clock", "_suppressed", "counts", "disconnects")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        now_s = clock()
        self._buckets = {
            reason: TokenBucket(LOG_RATE_PER_S, LOG_BURST, now_s) for reason in REFUSAL_REASONS
        }
        self._suppressed = dict.fromkeys(REFUSAL_REASONS, 0)
        self.counts: dict[RefusalReason, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        """Refusals by reason, since the node started."""
        self.disconnects: dict[int, int] = {}
        """Connections the node closed, by close code."""

    def refused(self, reason: RefusalReason, peer: Peer, detail: str) -> None:
        """Count a refusal and log it (unless this reason's lines are over their rate)."""
        self.counts[reason] += 1
        if not self._buckets[reason].take(self._clock()):
            self._suppressed[reason] += 1
            return
        suppressed, self._suppressed[reason] = self._suppressed[reason], 0
        if suppressed:
            logger.info("%d similar refusals (%s) suppressed", suppressed, _SAID[reason])
        logger.info("refused %s from %s: %s", _SAID[reason], peer_text(peer), detail)

    def refused_origin(self, peer: Peer, origin: str | None) -> None:
        """Count and log a browser origin that is not in ``allowed_origins``."""
        self.refused("origin", peer, f"{origin} is not in allowed_origins")

    def refused_request(self, error: RequestError, peer: Peer, *, api: bool = False) -> None:
        """Count and log ``error`` if it is a refusal (a bad request is not).

        ``api``: the error answered a server API call, where ``unauthorized`` is about
        the API key, not a connection token.
        """
        reason = _REASON_OF_CODE.get(error.code)
        if reason is not None:
            self.refused("api_key" if api and reason == "token" else reason, peer, error.message)

    def disconnected(self, code: int) -> None:
        """Count a connection the node closed with ``code``."""
        self.disconnects[code] = self.disconnects.get(code, 0) + 1
