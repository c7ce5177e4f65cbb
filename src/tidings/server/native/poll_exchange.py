"""A ``GET /poll`` of a native connection handed to the application's poll door
(``transports.poll.NativePoll``): it answers at once, parks the request until a
publication or its time-out, or falls back to the ASGI app; the connection tells it when
its client leaves while it is parked. No I/O of its own: it answers through the
connection (``port.ConnectionPort``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tidings.server.native.port import ConnectionPort
    from tidings.server.native.request import Request


class PollExchange:
    """A ``GET /poll`` handed to the app's native poll door (``transports.poll.NativePoll``)."""

    __slots__ = ("_conn", "_gone", "_request")

    def __init__(self, conn: ConnectionPort, request: Request) -> None:
        self._conn = conn
        self._request = request
        self._gone: Callable[[], None] | None = None

    @property
    def query_string(self) -> bytes:
        return self._request.query_string

    def header(self, name: bytes) -> bytes | None:
        return self._request.header(name)

    def respond(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self._gone = None
        self._conn.respond_now(self._request, status, headers, body)

    def fall_back(self) -> None:
        self._gone = None
        if not self._conn.closed:
            self._conn.serve_through_app(self._request)

    def on_client_gone(self, callback: Callable[[], None]) -> None:
        self._gone = callback

    def connection_lost(self) -> None:
        """The client left while the poll was parked."""
        gone, self._gone = self._gone, None
        if gone is not None:
            gone()
