"""The access log's redaction (server/access_log.py): no token reaches a log line."""

from __future__ import annotations

import logging

from tidings.server.access_log import TokenRedactingFilter, redacted_target


def test_a_token_in_the_query_is_redacted_and_the_rest_kept() -> None:
    assert (
        redacted_target("/poll", b"channel=room:1&token=eyJ.abc.def&wait=30")
        == "/poll?channel=room:1&token=[redacted]&wait=30"
    )


def test_a_query_without_a_token_is_kept_as_sent() -> None:
    assert (
        redacted_target("/sse", "channel=room%3A1&since=e:4") == "/sse?channel=room%3A1&since=e:4"
    )
    assert redacted_target("/health", b"") == "/health"


def test_uvicorns_handshake_lines_lose_their_token() -> None:
    record = logging.LogRecord(
        "uvicorn.error", logging.INFO, __file__, 1,
        '%s - "WebSocket %s" [accepted]', ("127.0.0.1:5000", "/ws?token=eyJ.abc.def&x=1"), None,
    )  # fmt: skip
    assert TokenRedactingFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "WebSocket /ws?token=[redacted]&x=1" [accepted]'
