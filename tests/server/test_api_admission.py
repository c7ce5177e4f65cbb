"""The server API's one door, ``admit_api_request``, shared by both server backends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import BadRequest, PermissionDenied, RequestError, Unauthorized
from tidings.server.api import admit_api_request, native_header_lookup

KEY = "k" * 32
LOCAL = "127.0.0.1:8000"
JSON = "application/json"


def headers(
    *,
    host: str | None = LOCAL,
    content_type: str | None = JSON,
    origin: str | None = None,
    sec_fetch_site: str | None = None,
    authorization: str | None = None,
) -> dict[str, str]:
    given_ = {
        "host": host,
        "content-type": content_type,
        "origin": origin,
        "sec-fetch-site": sec_fetch_site,
        "authorization": authorization,
    }
    return {name: value for name, value in given_.items() if value is not None}


@pytest.mark.parametrize(
    ("method", "head", "error"),
    [
        ("POST", headers(), None),
        ("POST", headers(host="localhost"), None),
        ("POST", headers(origin=f"http://{LOCAL}", sec_fetch_site="same-origin"), None),
        ("GET", headers(content_type=None), None),  # no body, no content type needed
        ("POST", headers(origin="https://evil.example"), PermissionDenied),
        ("POST", headers(sec_fetch_site="cross-site"), PermissionDenied),
        ("POST", headers(host="rebound.example:8000"), PermissionDenied),
        ("POST", headers(host=None), PermissionDenied),
        ("GET", headers(host="rebound.example"), PermissionDenied),
        ("POST", headers(content_type="text/plain;charset=UTF-8"), BadRequest),
        ("POST", headers(content_type=None), BadRequest),
    ],
)
def test_an_open_api_admits_only_same_site_json_callers_on_loopback(
    method: str, head: dict[str, str], error: type[RequestError] | None
) -> None:
    if error is None:
        admit_api_request(method, head.get, "http", None)
    else:
        with pytest.raises(error):
            admit_api_request(method, head.get, "http", None)


@given(
    host=st.none() | st.sampled_from([LOCAL, "tidings.internal", "rebound.example"]),
    origin=st.none() | st.sampled_from(["https://evil.example", "null"]),
)
def test_with_a_key_the_key_is_the_door_whatever_the_host_or_origin(
    host: str | None, origin: str | None
) -> None:
    good = headers(host=host, origin=origin, authorization=f"Bearer {KEY}")
    admit_api_request("POST", good.get, "http", KEY)
    wrong = headers(host=host, origin=origin, authorization="Bearer wrong")
    with pytest.raises(Unauthorized):
        admit_api_request("POST", wrong.get, "http", KEY)
    plain = {**good, "content-type": "text/plain"}
    with pytest.raises(BadRequest):
        admit_api_request("POST", plain.get, "http", KEY)


def test_the_native_servers_byte_headers_are_read_as_text() -> None:
    raw = {b"host": LOCAL.encode(), b"origin": b"https://\xe9.example"}
    lookup = native_header_lookup(raw.get)
    assert lookup("host") == LOCAL
    assert lookup("origin") == "https://\xe9.example"
    assert lookup("authorization") is None
