"""Where a subscription's connection token comes from: a fixed string, or a callable the
application gives (sync or async) that returns a fresh token each time it is called.

No I/O of its own (the callable may do some). With a callable the client renews the
token by itself (docs/protocol.md §8, ``exp``): it calls it before every connection, and
over WebSocket again shortly before the token expires, sending the new token with the
``refresh`` command; SSE and polls, which cannot be refreshed in place, reconnect with
a fresh token when the server ends them at expiry. A fixed token is sent as it is,
and once it has expired the server refuses it and the subscription stops.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Final

TokenSource = Callable[[], str | Awaitable[str]]
"""A callable returning a fresh connection token (or an awaitable of one)."""

Token = str | TokenSource

# Renew this long before ``exp``: a quarter of what remains, within these bounds.
RENEW_MARGIN_MIN_S: Final = 0.5
RENEW_MARGIN_MAX_S: Final = 30.0


class Tokens:
    """A subscription's token: fixed, or fetched from the application's callable."""

    __slots__ = ("_source",)

    def __init__(self, token: Token | None) -> None:
        self._source = token

    @property
    def is_renewable(self) -> bool:
        """Whether a new token can be had (the application gave a callable)."""
        return callable(self._source)

    async def fresh(self) -> str | None:
        """Return the token to present now: the fixed one, or a new one from the callable.

        Raises:
            TypeError: the callable returned something other than a string.
        """
        source = self._source
        if source is None or isinstance(source, str):
            return source
        token = source()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str):
            raise TypeError(f"the token callable must return a str, got {type(token).__name__}")
        return token


def renew_in_s(expires: float, now: float) -> float:
    """How long from ``now`` to renew a token that expires at ``expires`` (Unix seconds):
    a quarter of the time left before it, at least ``RENEW_MARGIN_MIN_S`` and at most
    ``RENEW_MARGIN_MAX_S`` ahead of the expiry, and never less than nothing."""
    left = expires - now
    margin = min(RENEW_MARGIN_MAX_S, max(RENEW_MARGIN_MIN_S, left / 4))
    return max(0.0, left - margin)
