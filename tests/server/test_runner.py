"""How ``tidings serve`` configures uvicorn (server/runner.py): the connection tokens in
query strings never reach its logs."""

from __future__ import annotations

import logging

import pytest

from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.runner import _uvicorn_config

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("logger_name", "message", "path"),
    [
        # uvicorn's access line, and its line for an accepted WebSocket handshake.
        ("uvicorn.access", '%s - "%s %s HTTP/%s" %d', f"/sse?channel=a&token={TOKEN}&x=1"),
        ("uvicorn.error", '%s - "WebSocket %s" [accepted]', f"/ws?token={TOKEN}"),
    ],
)
def test_uvicorn_logs_request_paths_with_the_token_redacted(
    caplog: pytest.LogCaptureFixture, logger_name: str, message: str, path: str
) -> None:
    _uvicorn_config(TidingsApp(Settings()), Settings(), "info")
    uvicorn_logger = logging.getLogger(logger_name)
    uvicorn_logger.addHandler(caplog.handler)  # uvicorn's loggers do not propagate
    try:
        if logger_name == "uvicorn.access":
            uvicorn_logger.info(message, "127.0.0.1:5000", "GET", path, "1.1", 200)
        else:
            uvicorn_logger.info(message, "127.0.0.1:5000", path)
    finally:
        uvicorn_logger.removeHandler(caplog.handler)
    [record] = [r for r in caplog.records if r.name == logger_name]
    line = record.getMessage()
    assert TOKEN not in line
    assert "token=[redacted]" in line
