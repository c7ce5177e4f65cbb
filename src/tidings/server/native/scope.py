"""The ASGI scopes of a native connection's requests: what the ASGI application is
told of an HTTP request or a WebSocket handshake. Pure: built from the parsed request
and the connection's addresses; the direct outbound (``transports.outbound``) is offered
as an extension so that transports write pre-encoded bytes past the ASGI messages.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from tidings.server.native.request import Request
from tidings.transports.outbound import DIRECT_OUTBOUND, Outbound

ASGI_VERSION: Final = {"version": "3.0", "spec_version": "2.4"}
# (host, port) of one end of the connection, as ASGI gives it; None when not known.
Address = tuple[str, int] | None


def http_scope(
    request: Request, server: Address, client: Address, outbound: Callable[[], Outbound]
) -> dict[str, Any]:
    """The scope of an HTTP request, offering ``outbound`` as direct outbound."""
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version,
        "server": server,
        "client": client,
        "scheme": "http",
        "method": request.method,
        "root_path": "",
        "path": request.path,
        "raw_path": request.raw_path,
        "query_string": request.query_string,
        "headers": request.headers,
        "extensions": {DIRECT_OUTBOUND: outbound},
    }


def websocket_scope(
    request: Request, server: Address, client: Address, factory: Callable[[], Outbound]
) -> dict[str, Any]:
    """The scope of an upgraded request, offering ``factory`` as direct outbound."""
    subprotocols = request.header(b"sec-websocket-protocol") or b""
    return {
        "type": "websocket",
        "asgi": ASGI_VERSION,
        "http_version": request.http_version,
        "server": server,
        "client": client,
        "scheme": "ws",
        "root_path": "",
        "path": request.path,
        "raw_path": request.raw_path,
        "query_string": request.query_string,
        "headers": request.headers,
        "subprotocols": [
            part.strip() for part in subprotocols.decode("latin-1").split(",") if part.strip()
        ],
        "extensions": {DIRECT_OUTBOUND: factory},
    }
