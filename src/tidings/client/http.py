"""What the client's HTTP users share (SSE, polling, the server API): the server's base
address, and reading answers that are not the one asked for.

I/O: reads the body of a failed response through httpx. The one rule: a body that is a
tidings error (``{"error": {"code", "message"}}``, docs/protocol.md §7) is the server
speaking, and becomes the ``RequestError`` of its code; anything else on a transport's
handshake (a proxy's page, a 404 of a server without that route) is
``TransportRefused``, which lets ``transport="auto"`` try the next transport.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from tidings.client.errors import (
    ProtocolViolation,
    Redirected,
    TransportRefused,
    decode_error,
    error_for,
)
from tidings.errors import RequestError

_DETAIL_CHARS: Final = 120
TEMPORARY_REDIRECT: Final = 307


def request_error(response: httpx.Response) -> RequestError:
    """Return the exception for a (read) error answer of the server API."""
    decoded = decode_error(response.content)
    if decoded is not None:
        code, message = decoded
        return error_for(code, message, response.status_code)
    return error_for("", f"HTTP {response.status_code}: {_detail(response)}", response.status_code)


async def check_answer(response: httpx.Response, transport: str, media_type: str) -> None:
    """Return if ``response`` is a 200 of ``media_type``; raise why it is not.

    Raises:
        Redirected: a ``307`` to the same request on another node (docs/protocol.md §9).
        RequestError: the server answered with a tidings error.
        TransportRefused: something else answered.
    """
    content_type = response.headers.get("content-type", "")
    if response.status_code == 200 and content_type.startswith(media_type):
        return
    location = response.headers.get("location")
    if response.status_code == TEMPORARY_REDIRECT and location:
        raise Redirected(url=node_base(location))
    await response.aread()
    decoded = decode_error(response.content)
    if decoded is not None:
        code, message = decoded
        raise error_for(code, message, response.status_code)
    status = response.status_code if response.status_code != 200 else None
    detail = _detail(response) if status else f"content-type {content_type!r}"
    raise TransportRefused(transport, status, detail)


def _detail(response: httpx.Response) -> str:
    text = response.text.strip().replace("\n", " ")
    return text[:_DETAIL_CHARS] or response.reason_phrase


TRANSPORT_PATHS: Final = ("/ws", "/sse", "/poll")


def node_base(url: str) -> str:
    """Return the base URL of the node ``url`` points to, as the server names an owner
    (docs/protocol.md §9): its ``/ws`` URL in a ``moved`` reply or a ``disconnect``, the
    same request on it in a ``307``'s ``Location``. The query and a final transport path
    are dropped; ``ws(s)`` is read as ``http(s)``.

    Raises:
        ProtocolViolation: not an absolute http(s) or ws(s) URL.
    """
    try:
        base = base_url(url)
    except ValueError:
        raise ProtocolViolation(f"a redirect to {url!r}, which is not a URL of a node") from None
    for path in TRANSPORT_PATHS:
        if base.endswith(path):
            return base.removesuffix(path)
    return base


def base_url(url: str) -> str:
    """Return the server's HTTP base address, without a trailing slash, from ``url``.

    ``ws://`` and ``wss://`` are read as ``http://`` and ``https://``.

    Raises:
        ValueError: not an http, https, ws or wss URL with a host.
    """
    parts = urlsplit(url)
    scheme = {"http": "http", "https": "https", "ws": "http", "wss": "https"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"server_url must be http(s)://host[:port][/path], got {url!r}")
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
