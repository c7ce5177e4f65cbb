"""What the client raises, and the one table turning the server's answers into exceptions.

Pure: no I/O. The server reports errors as ``{"error": {"code", "message"}}``
(docs/protocol.md §7), over HTTP with the code's status and over WebSocket inside a reply;
``error_for`` maps a code to the ``tidings.errors.RequestError`` subclass of the same
name, so an application catches ``PermissionDenied`` whichever transport or call it
used. The client adds three exceptions of its own::

    TidingsError
    ├── RequestError
    │   └── InternalServerError   internal   500 (the server failed; it logged why)
    ├── TransportRefused          a handshake answered by something that is not a
    │                             tidings endpoint (a proxy's 403 on /ws, an HTML page)
    ├── ProtocolViolation         the server sent something this client cannot read
    ├── TooManyRedirects          owner routing sent a channel on more than 5 times in a
    │                             row without it being served (docs/protocol.md §9)
    └── Redirected                (internal: a connection's channels are served by
                                  another node; the subscription follows it)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import msgspec

from tidings.core.channel import ChannelName
from tidings.errors import (
    BadRequest,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    RequestError,
    TidingsError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)


class InternalServerError(RequestError):
    """The server failed while serving the request (HTTP 500, close 4599); retry later."""

    code = "internal"


class TransportRefused(TidingsError):
    """A transport's handshake was answered, but not by a tidings endpoint.

    A proxy that answers 403 or 404 on ``/ws``, or a captive portal's HTML page on
    ``/sse``: ``transport="auto"`` moves to the next transport.
    """

    def __init__(self, transport: str, status: int | None, detail: str) -> None:
        where = f"HTTP {status}" if status is not None else "an unexpected answer"
        super().__init__(f"the {transport} handshake got {where}: {detail}")
        self.transport = transport
        self.status = status
        self.detail = detail

    @property
    def is_retryable(self) -> bool:
        """Whether the same handshake may succeed later (a 5xx, 408 or 429, or no status)."""
        return self.status is None or self.status >= 500 or self.status in (408, 429)


class ProtocolViolation(TidingsError):
    """The server sent something this client cannot read (not docs/protocol.md version 1)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"the server broke the protocol: {what}")
        self.what = what


class Redirected(TidingsError):
    """The server sent channels of a connection to another node (docs/protocol.md §9):
    a WebSocket ``moved`` reply, or a ``307`` to an SSE stream or a poll.

    Raised by a connector and taken by the subscription, which follows it; never seen
    by the application. ``moves`` maps each channel known to be served elsewhere to its
    owner's base URL (WebSocket replies name the channel); ``url`` is where a ``307``
    sent the whole request (the same request on the owner of one of its channels, not
    saying which one).
    """

    def __init__(
        self, moves: Mapping[ChannelName, str] | None = None, url: str | None = None
    ) -> None:
        self.moves = dict(moves or {})
        self.url = url
        described = ", ".join(f"{channel} to {owner}" for channel, owner in self.moves.items())
        super().__init__(f"redirected: {described or url}")


class TooManyRedirects(TidingsError):
    """Owner routing sent a channel from node to node more than ``limit`` times in a row
    without any node serving it: the nodes disagree about who owns it."""

    def __init__(self, channel: str, limit: int, url: str) -> None:
        super().__init__(
            f"channel {channel} was redirected {limit} times in a row without being served "
            f"(last to {url}); the nodes disagree about its owner"
        )
        self.channel = channel
        self.limit = limit
        self.url = url


class _MessageTooLarge(MessageTooLarge):
    """``MessageTooLarge`` built from the server's message (its fields are unknown here)."""

    def __init__(self, message: str) -> None:
        RequestError.__init__(self, message)
        self.size = 0
        self.limit = 0


_ERRORS: Final[dict[str, type[RequestError]]] = {
    "bad_request": BadRequest,
    "unauthorized": Unauthorized,
    "permission_denied": PermissionDenied,
    "not_found": NotFound,
    "message_too_large": _MessageTooLarge,
    "too_many_requests": TooManyRequests,
    "unavailable": Unavailable,
    "internal": InternalServerError,
}
_CODE_OF_STATUS: Final[dict[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "permission_denied",
    404: "not_found",
    413: "message_too_large",
    429: "too_many_requests",
    500: "internal",
    503: "unavailable",
}
# Request errors after which the same request may succeed later: the fault is the
# server's or momentary, so a subscription reconnects instead of stopping.
RETRYABLE_CODES: Final = frozenset({"too_many_requests", "unavailable", "internal"})


class ErrorBody(msgspec.Struct, frozen=True):
    """``{"code", "message"}`` of an error (docs/protocol.md §7); ``url`` with ``moved``
    (§9)."""

    code: str
    message: str
    url: str | None = None


class _ErrorAnswer(msgspec.Struct, frozen=True):
    error: ErrorBody


def error_for(code: str, message: str, status: int | None = None) -> RequestError:
    """Return the exception for a server error ``code`` (docs/protocol.md §7).

    An unknown code (a newer server) is read from the HTTP ``status`` when there is one.
    """
    kind = _ERRORS.get(code) or _ERRORS.get(_CODE_OF_STATUS.get(status or 0, ""))
    if kind is None:
        kind = InternalServerError if status is not None and status >= 500 else BadRequest
    return kind(message)


def decode_error(body: bytes | str) -> tuple[str, str] | None:
    """Return ``(code, message)`` if ``body`` is a tidings error answer, else ``None``."""
    try:
        answer = msgspec.json.decode(body, type=_ErrorAnswer)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return answer.error.code, answer.error.message


def is_retryable(error: RequestError) -> bool:
    """Whether a request that failed with ``error`` may succeed if made again later."""
    return error.code in RETRYABLE_CODES


def is_terminal_close(code: int) -> bool:
    """Whether a WebSocket close (or SSE ``disconnect``) with ``code`` forbids reconnecting.

    docs/protocol.md §3: 4000–4499 are terminal. Every other code is reconnected after: 1001
    and 1012 (going away, restarting), 4500–4999 (by definition), 1006 (the network cut
    the connection), and the rest, which a server does not send on purpose.
    """
    return 4000 <= code <= 4499
