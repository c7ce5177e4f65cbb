"""Fuzzing the native server's HTTP request path (issue #11, "Tests and proof"): request
heads and bodies made by hypothesis, well formed or not, go over a real socket into a
running server. Whatever arrives, the connection answers (no 5xx but 501, for an
unknown method) and closes, and nothing is logged as an error. Bounded: a modest number
of examples, each ending with the client's end of the stream."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from typing import Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.native.conftest import Served, serving
from tests.support.raw_http import API_KEY, TIMEOUT_S, RawConnection, connect

EXAMPLES: Final = 150
_STATUS_LINE: Final = re.compile(rb"HTTP/1\.1 (\d{3}) ")

token = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-!#", min_size=1, max_size=12
)
methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT"]),
    token,
)
# Paths that answer at once (no stream, no long poll: the example must end).
paths = st.one_of(
    st.sampled_from(
        [
            "/health",
            "/ready",
            "/metrics",
            "/nowhere",
            "/static/tidings.js",
            "/static/../../etc/passwd",
            "/poll?channel=room:fuzz",
            "/poll?channel=room:fuzz&since=abc:" + "9" * 30,
            "/poll?channel=bad%20name&limit=0",
            "/api/publish",
            "/api/history?channel=room:fuzz&limit=" + "1" * 5000,
            "/ws",
            "*",
        ]
    ),
    st.text(min_size=1, max_size=40).map(lambda text: "/" + text),
)
versions = st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 extra", ""])
header_names = st.one_of(
    st.sampled_from(
        [
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Expect",
            "Upgrade",
            "Authorization",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Version",
            "Origin",
            "If-None-Match",
        ]
    ),
    token,
)
header_values = st.one_of(
    st.sampled_from(
        [
            "x",
            "0",
            "5",
            "-1",
            "99999999999999999999",
            "chunked",
            "close",
            "keep-alive, Upgrade",
            "100-continue",
            "websocket",
            f"Bearer {API_KEY}",
            "dGhlIHNhbXBsZSBub25jZQ==",
            "13",
        ]
    ),
    st.text(max_size=30),
)
headers = st.lists(st.tuples(header_names, header_values), max_size=8)
bodies = st.one_of(
    st.just(b""),
    st.just(b'{"channel": "room:fuzz", "data": 1}'),
    st.just(b"5\r\nhello\r\n0\r\n\r\n"),
    st.binary(max_size=200),
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """One request, from well formed to garbage, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    line = f"{draw(methods)} {draw(paths)} {draw(versions)}"
    head = "".join(f"{name}: {value}\r\n" for name, value in draw(headers))
    wire = (line + "\r\n" + head + "\r\n").encode("utf-8", errors="surrogateescape")
    return wire + draw(bodies)


@pytest.fixture
async def fuzzed() -> AsyncIterator[Served]:
    """One server for every example of the test (hypothesis runs them in one call)."""
    async with serving(ping_interval_s=600.0) as server:
        yield server


async def answers_of(conn: RawConnection) -> bytes:
    """All the server sends until it closes the connection."""
    async with asyncio.timeout(TIMEOUT_S):
        received = await conn.reader.read()
    conn.close()
    return received


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(pipeline=st.lists(requests(), min_size=1, max_size=3))
async def test_any_request_is_answered_without_a_5xx_and_logs_no_error(
    fuzzed: Served, caplog: pytest.LogCaptureFixture, pipeline: list[bytes]
) -> None:
    first_record = len(caplog.records)
    conn = await connect(fuzzed.port)
    conn.writer.write(b"".join(pipeline))
    conn.writer.write_eof()  # the client is done: a request still waiting for bytes ends
    received = await answers_of(conn)
    statuses = [int(status) for status in _STATUS_LINE.findall(received)]
    # 501 is the answer to a method this server does not implement; no other 5xx.
    assert all(status < 500 or status == 501 for status in statuses), received[:500]
    errors = [r for r in caplog.records[first_record:] if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
