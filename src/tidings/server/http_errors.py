"""The one table mapping errors to HTTP statuses and JSON bodies (PROTOCOL.md §7)."""

from __future__ import annotations

import logging
from typing import Final

from starlette.responses import Response

from tidings.core.wire import encode_json
from tidings.errors import ErrorCode, RequestError

logger = logging.getLogger(__name__)

HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    "bad_request": 400,
    "unauthorized": 401,
    "permission_denied": 403,
    "not_found": 404,
    "message_too_large": 413,
    "too_many_requests": 429,
    "unavailable": 503,
    "internal": 500,
}


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Return ``body`` encoded as JSON."""
    return Response(encode_json(body), status, headers, media_type="application/json")


def error_response(code: ErrorCode, message: str) -> Response:
    """Return ``{"error": {"code", "message"}}`` with the code's HTTP status."""
    headers = {"WWW-Authenticate": "Bearer"} if code == "unauthorized" else None
    return json_response({"error": {"code": code, "message": message}}, HTTP_STATUS[code], headers)


def request_error_response(error: RequestError) -> Response:
    """Return the response for a request error."""
    return error_response(error.code, error.message)


def internal_error_response() -> Response:
    """Return a 500 that says nothing about internals (the cause is logged by the caller)."""
    return error_response("internal", "internal server error; the server logged the cause")
