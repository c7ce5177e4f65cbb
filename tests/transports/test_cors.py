"""CORS answers of the client transports: credentials only for origins listed by name."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.transports.http import cors_headers, preflight_response

ORIGINS = st.sampled_from(
    ["https://app.example.com", "https://evil.example", "http://127.0.0.1:8000", "null"]
)
ALLOWED = st.lists(st.sampled_from(["*", "https://app.example.com", "https://b.example"]))


@given(st.none() | ORIGINS, ALLOWED)
def test_credentials_are_allowed_only_to_an_origin_listed_by_name(
    origin: str | None, allowed: list[str]
) -> None:
    headers = cors_headers(origin, allowed)
    listed = origin is not None and origin in allowed
    assert ("Access-Control-Allow-Credentials" in headers) is listed
    if listed:
        assert headers["Access-Control-Allow-Origin"] == origin
    elif origin is not None and "*" in allowed:
        assert headers["Access-Control-Allow-Origin"] == "*"
    else:
        assert headers == {}
    if headers:
        assert headers["Vary"] == "Origin"


def test_a_wildcard_preflight_allows_the_request_without_credentials() -> None:
    response = preflight_response("https://evil.example", ["*"])
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-credentials" not in response.headers
