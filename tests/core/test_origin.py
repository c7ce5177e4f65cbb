"""Which origins may connect, with cookies or not; cross-site requests; loopback hosts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.origin import (
    OriginAccess,
    is_cross_site,
    is_loopback_host,
    is_origin_allowed,
    origin_access,
)

HOST = "127.0.0.1:8000"
APP = "https://app.example.com"
EVIL = "https://evil.example"


@pytest.mark.parametrize(
    ("origin", "allowed", "access"),
    [
        (None, (), OriginAccess.NO_ORIGIN),
        (f"http://{HOST}", (), OriginAccess.SAME_ORIGIN),
        (APP, (APP,), OriginAccess.LISTED),
        (APP, ("*", APP), OriginAccess.LISTED),
        (EVIL, ("*",), OriginAccess.ANY),
        (EVIL, (APP,), OriginAccess.REFUSED),
        ("null", (), OriginAccess.REFUSED),
    ],
)
def test_origin_access_tells_how_an_origin_is_admitted(
    origin: str | None, allowed: tuple[str, ...], access: OriginAccess
) -> None:
    assert origin_access(origin, HOST, "http", allowed) is access
    assert is_origin_allowed(origin, HOST, "http", allowed) is access.is_allowed


def test_cookies_count_only_for_own_pages_listed_origins_and_non_browsers() -> None:
    # "*" lets any page connect, with the credentials it holds itself, never its
    # visitor's cookie (issue #11, item 10).
    assert not OriginAccess.ANY.accepts_cookies
    assert not OriginAccess.REFUSED.accepts_cookies
    assert OriginAccess.LISTED.accepts_cookies
    assert OriginAccess.SAME_ORIGIN.accepts_cookies
    assert OriginAccess.NO_ORIGIN.accepts_cookies


def test_a_websocket_scheme_is_same_origin_with_its_http_page() -> None:
    assert origin_access(f"http://{HOST}", HOST, "ws", ()) is OriginAccess.SAME_ORIGIN
    assert origin_access(f"https://{HOST}", HOST, "wss", ()) is OriginAccess.SAME_ORIGIN


@pytest.mark.parametrize(
    ("origin", "fetch_site", "cross"),
    [
        (None, None, False),  # a backend, a CLI
        (f"http://{HOST}", None, False),
        (f"http://{HOST}", "same-origin", False),
        (None, "none", False),  # typed in the address bar
        (EVIL, None, True),
        ("null", None, True),  # a sandboxed page, a file
        (None, "cross-site", True),
        (None, "same-site", True),  # a sibling subdomain is another origin
        (None, " Cross-Site ", True),
    ],
)
def test_is_cross_site_reads_origin_and_fetch_metadata(
    origin: str | None, fetch_site: str | None, cross: bool
) -> None:
    assert is_cross_site(origin, fetch_site, HOST, "http") is cross


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:8000",
        "localhost",
        "LOCALHOST:80",
        "localhost.",
        "[::1]",
        "[::1]:8000",
        "::1",
        "127.9.9.9:1",
    ],
)
def test_loopback_hosts_are_recognised_with_any_port(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "0.0.0.0",
        "::",
        "10.0.0.1:8000",
        "evil.example:8000",
        "localhost.evil.example",
        "127.0.0.1.nip.io",
        "[::1",
        "[::1]x",
        "127.0.0.1:80x",
        "localhost:",
        "[::2]:80",
    ],
)
def test_other_hosts_are_not_loopback(host: str | None) -> None:
    assert not is_loopback_host(host)


@given(st.integers(min_value=0, max_value=65535))
def test_a_loopback_address_is_loopback_on_every_port(port: int) -> None:
    assert is_loopback_host(f"127.0.0.1:{port}")
    assert is_loopback_host(f"[::1]:{port}")
    assert not is_loopback_host(f"attacker.example:{port}")
