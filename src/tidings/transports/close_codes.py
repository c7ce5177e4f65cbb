"""WebSocket close codes (docs/protocol.md §3), and the one translation of errors for the
WebSocket transport: the table mapping them to close codes, and the error reply. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from tidings.core.placement import owner_websocket_url
from tidings.core.wire import encode_json
from tidings.errors import ChannelMoved, ErrorCode, RequestError

CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001
CLOSE_RESTARTING: Final = 1012
CLOSE_UNAUTHORIZED: Final = 4001
CLOSE_FORBIDDEN: Final = 4003
CLOSE_PROTOCOL_VIOLATION: Final = 4008
CLOSE_MESSAGE_TOO_BIG: Final = 4009
CLOSE_INTERNAL: Final = 4500 + 99  # 4599: reconnect, the fault was ours
CLOSE_SLOW_CONSUMER: Final = 4500
CLOSE_CONNECTION_LIMIT: Final = 4501
CLOSE_MOVED: Final = 4503
# Extension (docs/protocol.md): the broker lost publications after the client's
# position while it was live; reconnect and resume to be told recovered: false.
CLOSE_PUBLICATIONS_LOST: Final = 4504

# A request error that ends a connection (rather than failing one command) closes it so.
_CLOSE_FOR_ERROR: Final[dict[ErrorCode, int]] = {
    "unauthorized": CLOSE_UNAUTHORIZED,
    "permission_denied": CLOSE_FORBIDDEN,
    "bad_request": CLOSE_PROTOCOL_VIOLATION,
    "message_too_large": CLOSE_MESSAGE_TOO_BIG,
    "too_many_requests": CLOSE_CONNECTION_LIMIT,
    "unavailable": CLOSE_MOVED,
    "not_found": CLOSE_FORBIDDEN,
    "internal": CLOSE_INTERNAL,
    "moved": CLOSE_MOVED,
    "stale_ring": CLOSE_MOVED,  # node-to-node calls only: never ends a WebSocket
}


def is_reconnectable(code: int) -> bool:
    """Whether a client should reconnect after a close with ``code``."""
    return code in (CLOSE_GOING_AWAY, CLOSE_RESTARTING) or 4500 <= code <= 4999


def close_for(error: RequestError) -> tuple[int, bool]:
    """Return the close code for an error that ends a connection, and whether to reconnect."""
    code = _CLOSE_FOR_ERROR[error.code]
    return code, is_reconnectable(code)


@dataclass(frozen=True, slots=True)
class WebSocketClose:
    """How an error ends a WebSocket: the close code and reason, whether the client
    should reconnect, and where to (``url``: a ``moved`` error's owner, docs/protocol.md §9)."""

    code: int
    reason: str
    reconnect: bool
    url: str | None = None


def close_of(error: RequestError) -> WebSocketClose:
    """Return how ``error`` ends a connection (``close_for``, with the reason and url)."""
    code, reconnect = close_for(error)
    url = owner_websocket_url(error.owner_url) if isinstance(error, ChannelMoved) else None
    return WebSocketClose(code, error.message, reconnect, url)


def error_reply(command_id: int, error: RequestError) -> str:
    """Return the reply of a command that failed with ``error`` (docs/protocol.md §2): its
    ``code`` and ``message``, and for ``moved`` the owner's ``/ws`` URL (§9)."""
    body: dict[str, object] = {"code": error.code, "message": error.message}
    if isinstance(error, ChannelMoved):
        body["url"] = owner_websocket_url(error.owner_url)
    return encode_json({"id": command_id, "error": body}).decode()
