"""What the helpers of one HTTP connection may use of it: the port ``HttpConnection`` offers.

A request's response writer (``response``), a poll exchange and an upgraded WebSocket
(``websocket``) write to their client through the connection that read the request,
and no further: they see this protocol, never the connection's private state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tidings.server.native.request import Request
    from tidings.transports.outbound import Outbound


class ConnectionPort(Protocol):
    """One client connection, as its request's helpers see it."""

    @property
    def transport(self) -> asyncio.Transport | None:
        """The socket's transport; ``None`` before it is made."""

    @property
    def closed(self) -> bool:
        """Whether the connection is closed (or closing): nothing more is written."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the connection runs on."""

    @property
    def is_write_paused(self) -> bool:
        """Whether the transport's write buffer is full (the client does not read)."""

    @property
    def is_stopping(self) -> bool:
        """Whether the server is stopping: a response then closes its connection."""

    async def drain(self) -> None:
        """Return once the transport takes writes again (or the connection is gone)."""

    def update_reading(self) -> None:
        """Pause or resume reading the client's bytes as the buffers allow."""

    def close(self) -> None:
        """Close once what was written is sent."""

    def abort(self) -> None:
        """Close at once, dropping what is unsent."""

    def respond_now(
        self, request: Request, status: int, headers: Mapping[str, str], body: bytes
    ) -> None:
        """Write a whole response to ``request`` at once (no ASGI cycle)."""

    def serve_through_app(self, request: Request) -> None:
        """Serve ``request`` with the ASGI application (a door handing it back)."""

    def websocket_scope(self, request: Request, factory: Callable[[], Outbound]) -> dict[str, Any]:
        """The ASGI scope of an upgraded request, offering ``factory`` as direct outbound."""

    def refuse_upgrade(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None
    ) -> None:
        """Answer a refused WebSocket handshake in plain HTTP, then close."""
