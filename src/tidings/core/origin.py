"""Which browser origins may open a connection (PROTOCOL.md §8). Pure."""

from __future__ import annotations

from collections.abc import Collection


def is_origin_allowed(
    origin: str | None, host: str | None, scheme: str, allowed: Collection[str]
) -> bool:
    """Whether a request with this ``Origin`` header may connect.

    Clients that send no ``Origin`` (servers, CLIs) are always allowed; a browser page
    is allowed when it is same-origin, or when its origin is listed (``*`` lists all).

    Args:
        origin: the ``Origin`` header, or ``None``.
        host: the ``Host`` header, or ``None``.
        scheme: ``http``/``https`` (``ws``/``wss`` are treated alike).
        allowed: the ``allowed_origins`` setting.
    """
    if origin is None:
        return True
    if "*" in allowed or origin in allowed:
        return True
    if host is None:
        return False
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return origin == f"{http_scheme}://{host}"
