"""A request of tidings' native HTTP server: its parsed head and body (``Request``), the
refusals its parsing may raise (``RefusedRequest``, answered with the error shape of
docs/protocol.md §7), and how the server tells an unknown method (501) from garbage
(400). Pure: no I/O.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from tidings.core.digits import parse_digits
from tidings.errors import ErrorCode

# The methods this server implements; any other is answered 501 (RFC 9110 §9.1).
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


@dataclass(slots=True)
class Request:
    """A parsed request head and its whole body."""

    method: str
    http_version: str
    raw_path: bytes
    query_string: bytes
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool
    body: bytes = b""
    received_s: float = 0.0  # time.perf_counter() when its head was parsed (access log)
    size: int = 0  # bytes of head and body as read: what this request holds while it waits
    _index: dict[bytes, bytes] | None = None  # built on the first look-up

    def header(self, name: bytes) -> bytes | None:
        """Return the first value of header ``name`` (lower case), if present."""
        index = self._index
        if index is None:
            index = self._index = {}
            for key, value in self.headers:
                index.setdefault(key, value)
        return index.get(name)

    def header_values(self, name: bytes) -> list[bytes]:
        """Return every value of header ``name`` (lower case), in order: a list field
        may be split over several lines (RFC 9110 §5.3)."""
        return [value for key, value in self.headers if key == name]

    @property
    def path(self) -> str:
        """The percent-decoded path."""
        path = self.raw_path.decode("ascii", errors="replace")
        return urllib.parse.unquote(path) if "%" in path else path


class RefusedRequest(Exception):
    """Raised from a parser callback: the request is refused with ``status``."""

    def __init__(
        self, status: HTTPStatus, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers: Mapping[str, str] = headers or {}


# The docs/protocol.md §7 code of each refusal's status (any other: bad_request).
REFUSAL_CODES: Final[dict[int, ErrorCode]] = {
    HTTPStatus.FORBIDDEN: "permission_denied",
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: "message_too_large",
    HTTPStatus.INTERNAL_SERVER_ERROR: "internal",
}


def check_head(request: Request, *, max_body_bytes: int) -> None:
    """Refuse a parsed head this server does not serve.

    Raises:
        RefusedRequest: an unknown method (501), not exactly one Host header (400), or
            a declared body over ``max_body_bytes`` (413).
    """
    if request.method not in METHODS:
        raise RefusedRequest(HTTPStatus.NOT_IMPLEMENTED, "this server implements no such method")
    hosts = len(request.header_values(b"host"))
    if hosts > 1 or (hosts == 0 and request.http_version != "1.0"):
        # RFC 9112 §3.2: exactly one Host in HTTP/1.1, at most one in HTTP/1.0.
        raise RefusedRequest(HTTPStatus.BAD_REQUEST, "give exactly one Host header")
    length = request.header(b"content-length")  # digits: the parser checked them
    if length is not None and (parse_digits(length.decode("latin-1")) or 0) > max_body_bytes:
        raise RefusedRequest(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {max_body_bytes:,} bytes"
        )


# A request line (RFC 9112 §3): a method token, a target, a version.
_REQUEST_LINE: Final = re.compile(
    rb"(?:\A|\n)([!#$%&'*+.^_`|~0-9A-Za-z-]+) [^ \r\n]+ HTTP/1\.[01]\r?\n"
)


def is_unknown_method(data: bytes) -> bool:
    """Whether the parser, failing on ``data`` for its method, met a request line with a
    method it does not know (501) rather than garbage (400): the last request line in
    ``data`` is then the failing one, as every method before it parsed."""
    method = None
    for match in _REQUEST_LINE.finditer(data):
        method = match.group(1)
    return method is not None and method.decode("ascii") not in METHODS
