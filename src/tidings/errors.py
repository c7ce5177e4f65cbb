"""The exceptions tidings raises, rooted in one class.

Pure: no I/O. Who is at fault decides the branch::

    TidingsError
    ├── RequestError            the peer sent something wrong; carries a docs/protocol.md §7 code
    │   ├── BadRequest              bad_request        400
    │   ├── Unauthorized            unauthorized       401
    │   ├── PermissionDenied        permission_denied  403
    │   │   └── OriginRefused           ... a browser origin not in allowed_origins
    │   ├── NotFound                not_found          404
    │   ├── MessageTooLarge         message_too_large  413
    │   ├── TooManyRequests         too_many_requests  429
    │   │   └── RateLimited             ... commands over a WebSocket's command_rate
    │   ├── Unavailable             unavailable        503
    │   ├── ChannelMoved            moved              307 (HTTP), a reply (WebSocket)
    │   └── StaleRing               stale_ring         409 (node-to-node calls only)
    ├── ConfigError             the operator's configuration is wrong (also a ValueError)
    ├── BrokerError             a broker backend failed (raised ``from`` the backend's error)
    │   └── BrokerUnavailable       ... and the operation was never sent to it: not done
    └── ConnectionClosed        ends a session with a close code and a reason

A ``RequestError`` message is safe to send back to the peer: it says what was wrong and
what would be accepted, and never contains a secret.
"""

from __future__ import annotations

from typing import ClassVar, Literal

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "permission_denied",
    "not_found",
    "message_too_large",
    "too_many_requests",
    "unavailable",
    "internal",
    "moved",
    "stale_ring",
]


class TidingsError(Exception):
    """Root of every exception tidings raises on purpose."""


class RequestError(TidingsError):
    """The peer sent something wrong; ``message`` may be sent back as is."""

    code: ClassVar[ErrorCode] = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RequestError):
    """Malformed or invalid input: a frame, a channel name, a cursor, a parameter."""

    code = "bad_request"


class Unauthorized(RequestError):
    """Missing, invalid or expired credentials."""

    code = "unauthorized"


class PermissionDenied(RequestError):
    """Valid credentials that do not allow this operation."""

    code = "permission_denied"


class OriginRefused(PermissionDenied):
    """A browser page whose ``Origin`` is not in ``allowed_origins`` (docs/protocol.md §8)."""

    def __init__(self, origin: str | None) -> None:
        super().__init__("this origin is not in allowed_origins")
        self.origin = origin


class NotFound(RequestError):
    """The thing asked for does not exist."""

    code = "not_found"


class MessageTooLarge(RequestError):
    """A publication's data or a frame is over its size limit."""

    code = "message_too_large"

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"{what} is {size:,} bytes; at most {limit:,} bytes are allowed")
        self.size = size
        self.limit = limit


class TooManyRequests(RequestError):
    """A rate or connection limit was reached."""

    code = "too_many_requests"


class RateLimited(TooManyRequests):
    """A WebSocket sent commands faster than ``command_rate`` (per second) allows."""

    def __init__(self, rate: float) -> None:
        super().__init__(f"more than {rate:g} commands per second; slow down")
        self.rate = rate


class Unavailable(RequestError):
    """The server cannot serve this now (broker down, draining); try again later."""

    code = "unavailable"


class ChannelMoved(RequestError):
    """The channel is owned by another node (docs/protocol.md §9), whose base URL is
    ``owner_url``: each transport points the client there (the owner's ``/ws`` URL in a
    WebSocket reply, a ``307`` to the same request on the owner over HTTP)."""

    code = "moved"

    def __init__(self, channel: str, owner_url: str) -> None:
        super().__init__(f"channel {channel} is served by another node: {owner_url}")
        self.channel = channel
        self.owner_url = owner_url


class StaleRing(RequestError):
    """A call forwarded by another node was made with a ring older than this node's,
    or with one that makes another node the channel's owner (docs/modes/hashing.md,
    "Forwarding"): the fencing token refused. The caller reads the ring again and
    retries once."""

    code = "stale_ring"

    def __init__(self, channel: str, call_version: int, own_version: int) -> None:
        super().__init__(
            f"this node does not own {channel} in ring version {own_version}; "
            f"the call was made with version {call_version}"
        )
        self.channel = channel
        self.call_version = call_version
        self.own_version = own_version


class ConfigError(TidingsError, ValueError):
    """The configuration (file, environment, arguments) is invalid."""


class BrokerError(TidingsError):
    """A broker backend failed; the cause is chained. A write may or may not have been
    made (the backend may have done it and failed to answer)."""


class BrokerUnavailable(BrokerError):
    """The backend does not answer now, and the operation was never sent to it: a write
    failing with this was not made, and will not be made later."""


class ConnectionClosed(TidingsError):
    """Ends a session: the transport closes with ``code`` and ``reason``; ``delay_ms``
    is the server's advice of how long to wait before reconnecting (docs/protocol.md §3),
    and ``url`` where to reconnect to (a moved connection, 4503, §9)."""

    def __init__(
        self,
        code: int,
        reason: str,
        *,
        reconnect: bool = False,
        delay_ms: int | None = None,
        url: str | None = None,
    ) -> None:
        super().__init__(f"connection closed with {code}: {reason}")
        self.code = code
        self.reason = reason
        self.reconnect = reconnect
        self.delay_ms = delay_ms
        self.url = url
