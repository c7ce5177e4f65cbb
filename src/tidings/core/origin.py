"""Which browser origins may use a node, and with what authority (docs/protocol.md §8). Pure.

Three questions, each answered once here for every transport and both server backends:
may a page of this ``Origin`` connect to ``/ws``, ``/sse`` and ``/poll``, and may its
cookies authenticate it (``origin_access``); is a request cross-site, which the open
server API refuses (``is_cross_site``); and is a ``Host`` a loopback name, the only one
an open server API answers, so a DNS-rebound page cannot reach it (``is_loopback_host``).

Cookies are ambient authority: a browser attaches them to any site's request. So they
count only from the node's own pages, from origins listed by name in
``allowed_origins``, and from clients that send no ``Origin`` at all (servers, CLIs).
``*`` lets any page connect with the credentials it holds itself (a token in the URL or
a header), never with a user's cookie.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Collection
from typing import Final

WILDCARD: Final = "*"
# Sec-Fetch-Site values of a request made by another site's page (Fetch Metadata).
_CROSS_SITE_FETCHES: Final = frozenset({"cross-site", "same-site"})
_LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


class OriginAccess(enum.Enum):
    """How a request's ``Origin`` is admitted by ``allowed_origins``."""

    NO_ORIGIN = "no-origin"  # not a browser page (a server, a CLI): no CORS involved
    SAME_ORIGIN = "same-origin"  # a page of the node itself
    LISTED = "listed"  # an origin listed by name: CORS with credentials
    ANY = "any"  # admitted only by ``*``: CORS without credentials
    REFUSED = "refused"

    @property
    def is_allowed(self) -> bool:
        """Whether the request may use the client transports at all."""
        return self is not OriginAccess.REFUSED

    @property
    def accepts_cookies(self) -> bool:
        """Whether a cookie may authenticate the request (never for ``*`` alone)."""
        return self in (OriginAccess.NO_ORIGIN, OriginAccess.SAME_ORIGIN, OriginAccess.LISTED)


def origin_access(
    origin: str | None, host: str | None, scheme: str, allowed: Collection[str]
) -> OriginAccess:
    """How a request with this ``Origin`` header is admitted.

    Args:
        origin: the ``Origin`` header, or ``None``.
        host: the ``Host`` header, or ``None``.
        scheme: ``http``/``https`` (``ws``/``wss`` are treated alike).
        allowed: the ``allowed_origins`` setting.
    """
    if origin is None:
        return OriginAccess.NO_ORIGIN
    if origin in allowed:
        return OriginAccess.LISTED
    if is_same_origin(origin, host, scheme):
        return OriginAccess.SAME_ORIGIN
    if WILDCARD in allowed:
        return OriginAccess.ANY
    return OriginAccess.REFUSED


def is_origin_allowed(
    origin: str | None, host: str | None, scheme: str, allowed: Collection[str]
) -> bool:
    """Whether a request with this ``Origin`` header may connect.

    Clients that send no ``Origin`` (servers, CLIs) are always allowed; a browser page
    is allowed when it is same-origin, or when its origin is listed (``*`` lists all).
    See ``origin_access`` for the arguments.
    """
    return origin_access(origin, host, scheme, allowed).is_allowed


def is_same_origin(origin: str, host: str | None, scheme: str) -> bool:
    """Whether ``origin`` is the origin of a request to ``host`` over ``scheme``."""
    if host is None:
        return False
    http_scheme = {"ws": "http", "wss": "https"}.get(scheme, scheme)
    return origin == f"{http_scheme}://{host}"


def is_cross_site(
    origin: str | None, sec_fetch_site: str | None, host: str | None, scheme: str
) -> bool:
    """Whether a browser says this request comes from another site's page.

    Either sign is enough: an ``Origin`` other than the request's own (``null`` from a
    sandboxed page or a file included), or ``Sec-Fetch-Site: cross-site``/``same-site``.
    A request with neither (a server, a CLI, an old browser's same-origin GET) is not.
    """
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() in _CROSS_SITE_FETCHES:
        return True
    return origin is not None and not is_same_origin(origin, host, scheme)


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (a ``Host`` header or a bind address, any port) names this machine
    by loopback: ``localhost``, ``127.0.0.1`` (any of 127.0.0.0/8) or ``[::1]``.

    A DNS name an attacker controls may resolve to 127.0.0.1 (DNS rebinding), but the
    browser then still sends that name as ``Host``: only these literal names prove that
    the caller meant this machine.
    """
    name = (host or "").strip().lower()
    if name.startswith("["):  # [::1] or [::1]:8000
        name, bracket, rest = name[1:].partition("]")
        if not bracket or (rest and not _is_port(rest)):
            return False
    elif name.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        name, _, port = name.partition(":")
        if not _is_port(":" + port):
            return False
    if name in _LOOPBACK_NAMES or name.rstrip(".") == "localhost":
        return True  # the usual names, without parsing an address
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _is_port(suffix: str) -> bool:
    return suffix.startswith(":") and suffix[1:].isascii() and suffix[1:].isdigit()
