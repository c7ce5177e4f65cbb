"""What HTTP transports and the server API share: the one table mapping errors to
statuses and JSON bodies (docs/protocol.md §7), request credentials, and CORS (§8).

No I/O: builds responses and reads request headers."""

from __future__ import annotations

import logging
from collections.abc import Collection
from typing import Final, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from tidings.core.digits import parse_digits
from tidings.core.origin import WILDCARD
from tidings.core.placement import owner_location
from tidings.core.wire import encode_json
from tidings.errors import BadRequest, ChannelMoved, ErrorCode, MessageTooLarge, RequestError

logger = logging.getLogger(__name__)

T = TypeVar("T")

_PREFLIGHT_ALLOWED_HEADERS: Final = "Authorization, Last-Event-ID, If-None-Match, Cache-Control"

HTTP_STATUS: Final[dict[ErrorCode, int]] = {
    "bad_request": 400,
    "unauthorized": 401,
    "permission_denied": 403,
    "not_found": 404,
    "message_too_large": 413,
    "too_many_requests": 429,
    "unavailable": 503,
    "internal": 500,
    # docs/protocol.md §9: the same request, on the channel's owner (``Location``).
    "moved": 307,
    # docs/modes/hashing.md: a forwarded call refused by the owner's newer ring.
    "stale_ring": 409,
}


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """Return ``body`` encoded as JSON."""
    return Response(encode_json(body), status, headers, media_type="application/json")


def error_parts(code: ErrorCode, message: str) -> tuple[int, dict[str, str], bytes]:
    """Return the status, headers and body of ``{"error": {"code", "message"}}``."""
    headers = {"content-type": "application/json"}
    if code == "unauthorized":
        headers["www-authenticate"] = "Bearer"
    body = encode_json({"error": {"code": code, "message": message}})
    return HTTP_STATUS[code], headers, body


def error_response(code: ErrorCode, message: str) -> Response:
    """Return ``{"error": {"code", "message"}}`` with the code's HTTP status."""
    status, headers, body = error_parts(code, message)
    return Response(body, status, headers)


def request_error_parts(error: RequestError, target: str = "") -> tuple[int, dict[str, str], bytes]:
    """Return the status, headers and body answering ``error``: the one translation of
    errors for the HTTP transports (the statuses are ``HTTP_STATUS``).

    ``target`` is the request's path and query (``/sse?channel=doc:9``): a channel owned
    by another node is answered ``307`` with ``Location`` set to it on the owner.
    """
    if not isinstance(error, ChannelMoved):
        return error_parts(error.code, error.message)
    url = owner_location(error.owner_url, target)
    body = encode_json({"error": {"code": error.code, "message": error.message, "url": url}})
    headers = {"content-type": "application/json", "location": url}
    return HTTP_STATUS[error.code], headers, body


def request_error_response(error: RequestError, target: str = "") -> Response:
    """Return the response for a request error (see ``request_error_parts``)."""
    status, headers, body = request_error_parts(error, target)
    return Response(body, status, headers)


INTERNAL_ERROR_MESSAGE: Final = "internal server error; the server logged the cause"


def internal_error_response() -> Response:
    """Return a 500 that says nothing about internals (the cause is logged by the caller)."""
    return error_response("internal", INTERNAL_ERROR_MESSAGE)


def request_target(scope: Scope) -> str:
    """The request's path and query (``/sse?channel=doc:9``): what the same request on
    another node needs (a ``307`` to the channel's owner)."""
    query: str = scope.get("query_string", b"").decode("latin-1")
    path: str = scope["path"]
    return f"{path}?{query}" if query else path


def bearer_token(authorization: str | None) -> str | None:
    """Return the token of an ``Authorization: Bearer <token>`` header, if that is one."""
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip() or None
    return None


TOKEN_COOKIE: Final = "tidings_token"


def request_token(
    authorization: str | None, query_token: str | None, cookie_header: str | None
) -> str | None:
    """Return a client transport's connection token: from ``Authorization: Bearer``,
    else ``?token=``, else the ``tidings_token`` cookie (docs/protocol.md §4, §5)."""
    token = bearer_token(authorization)
    if token is not None:
        return token
    if query_token:
        return query_token
    for part in (cookie_header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == TOKEN_COOKIE and value:
            return value
    return None


def cors_headers(origin: str | None, allowed: Collection[str]) -> dict[str, str]:
    """Return the CORS headers for a cross-origin request from an allowed origin.

    An origin listed by name may send credentials (cookies), so it is echoed with
    ``Access-Control-Allow-Credentials``; one admitted by ``*`` alone gets ``*`` and no
    credentials (docs/protocol.md §8): a browser then withholds the response of a request
    that carried its user's cookies. Caches are told the answer varies by origin.
    """
    if origin is None:
        return {}
    if origin in allowed:
        headers = {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
        }
    elif WILDCARD in allowed:
        headers = {"Access-Control-Allow-Origin": WILDCARD}
    else:
        return {}
    headers.update({"Access-Control-Expose-Headers": "ETag", "Vary": "Origin"})
    return headers


def preflight_response(origin: str | None, allowed: Collection[str]) -> Response:
    """Answer a CORS preflight for the client transports (GET with auth headers)."""
    headers = cors_headers(origin, allowed)
    if not headers:
        return error_response("permission_denied", "this origin is not in allowed_origins")
    headers.update(
        {
            "Access-Control-Allow-Methods": "GET, OPTIONS",
            "Access-Control-Allow-Headers": _PREFLIGHT_ALLOWED_HEADERS,
            "Access-Control-Max-Age": "600",
        }
    )
    return Response(status_code=204, headers=headers)


def query_int(
    text: str | None, name: str, low: int, high: int, *, default: int | None
) -> int | None:
    """Parse an integer query parameter in ``[low, high]`` (``default`` when absent).

    Raises:
        BadRequest: not ASCII digits, or out of range.
    """
    if text is None:
        return default
    value = parse_digits(text)
    if value is None or not low <= value <= high:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}")
    return value


async def read_json_body(request: Request, kind: type[T], max_bytes: int) -> T:
    """Read a request body of at most ``max_bytes`` and decode it into ``kind``.

    Raises:
        MessageTooLarge: the body is longer than ``max_bytes``.
        BadRequest: the body is not JSON, or not of the expected shape (the message
            names the field).
    """
    return decode_json_body(await read_body(request, max_bytes), kind, max_bytes)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """Read a whole request body of at most ``max_bytes``.

    Raises:
        MessageTooLarge: the body is longer than ``max_bytes``.
    """
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise MessageTooLarge("request body", len(body), max_bytes)
    return body


def decode_json_body(body: bytes, kind: type[T], max_bytes: int) -> T:
    """Decode a whole request body of at most ``max_bytes`` into ``kind``.

    Raises:
        MessageTooLarge: the body is longer than ``max_bytes``.
        BadRequest: the body is not JSON, or not of the expected shape.
    """
    if len(body) > max_bytes:
        raise MessageTooLarge("request body", len(body), max_bytes)
    try:
        decoded: T = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"invalid body: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    return decoded
