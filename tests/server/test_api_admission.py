"""The server API's one door, ``admit_api_request``, shared by both server backends."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import BadRequest, PermissionDenied, RequestError, Unauthorized
from tidings.server.api import ApiRequestHead, admit_api_request

KEY = "k" * 32
LOCAL = "127.0.0.1:8000"
JSON = "application/json"


def post(
    *,
    host: str | None = LOCAL,
    content_type: str | None = JSON,
    origin: str | None = None,
    sec_fetch_site: str | None = None,
    authorization: str | None = None,
) -> ApiRequestHead:
    return ApiRequestHead(
        "POST",
        authorization=authorization,
        content_type=content_type,
        origin=origin,
        sec_fetch_site=sec_fetch_site,
        host=host,
    )


@pytest.mark.parametrize(
    ("head", "error"),
    [
        (post(), None),
        (post(host="localhost"), None),
        (post(origin=f"http://{LOCAL}", sec_fetch_site="same-origin"), None),
        (ApiRequestHead("GET", host=LOCAL), None),  # no body, no content type needed
        (post(origin="https://evil.example"), PermissionDenied),
        (post(sec_fetch_site="cross-site"), PermissionDenied),
        (post(host="rebound.example:8000"), PermissionDenied),
        (post(host=None), PermissionDenied),
        (ApiRequestHead("GET", host="rebound.example"), PermissionDenied),
        (post(content_type="text/plain;charset=UTF-8"), BadRequest),
        (post(content_type=None), BadRequest),
    ],
)
def test_an_open_api_admits_only_same_site_json_callers_on_loopback(
    head: ApiRequestHead, error: type[RequestError] | None
) -> None:
    if error is None:
        admit_api_request(head, None)
    else:
        with pytest.raises(error):
            admit_api_request(head, None)


@given(
    host=st.none() | st.sampled_from([LOCAL, "tidings.internal", "rebound.example"]),
    origin=st.none() | st.sampled_from(["https://evil.example", "null"]),
)
def test_with_a_key_the_key_is_the_door_whatever_the_host_or_origin(
    host: str | None, origin: str | None
) -> None:
    admit_api_request(post(host=host, origin=origin, authorization=f"Bearer {KEY}"), KEY)
    with pytest.raises(Unauthorized):
        admit_api_request(post(host=host, origin=origin, authorization="Bearer wrong"), KEY)
    with pytest.raises(BadRequest):
        admit_api_request(
            post(
                host=host, origin=origin, content_type="text/plain", authorization=f"Bearer {KEY}"
            ),
            KEY,
        )
