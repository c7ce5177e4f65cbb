"""Requests at the edges of what a node accepts (issue #11 item 19), on both server
backends: numbers of thousands of digits are a ``bad_request``, never a 500; a missing
file under ``/static`` is a 404."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import api_headers, unique

HUGE = "9" * 5000  # past Python's 4,300-digit conversion limit


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/poll", {"wait": HUGE}),
        ("/poll", {"limit": HUGE}),
        ("/poll", {"since": f"abc:{HUGE}"}),
        ("/poll", {"since": "abc:" + "1" * 21}),
        ("/sse", {"since": f"abc:{HUGE}"}),
        ("/api/history", {"limit": HUGE}),
        ("/api/history", {"since_epoch": "abc", "since_offset": HUGE}),
    ],
)
async def test_a_number_of_thousands_of_digits_is_a_bad_request(
    http: httpx.AsyncClient, path: str, params: dict[str, str]
) -> None:
    response = await http.get(path, params={"channel": unique(), **params}, headers=api_headers())
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "bad_request"


async def test_a_missing_file_under_static_is_a_404(http: httpx.AsyncClient) -> None:
    response = await http.get("/static/no-such-file.js")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert (await http.get("/static/tidings.js")).status_code == 200
