"""The client's error table (client/errors.py): server codes become the exceptions of
the same name; close codes split into terminal and reconnect."""

from __future__ import annotations

import pytest

from tidings.client.errors import (
    InternalServerError,
    TransportRefused,
    decode_error,
    error_for,
    is_retryable,
    is_terminal_close,
)
from tidings.errors import (
    BadRequest,
    MessageTooLarge,
    NotFound,
    PermissionDenied,
    RequestError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("bad_request", BadRequest),
        ("unauthorized", Unauthorized),
        ("permission_denied", PermissionDenied),
        ("not_found", NotFound),
        ("message_too_large", MessageTooLarge),
        ("too_many_requests", TooManyRequests),
        ("unavailable", Unavailable),
        ("internal", InternalServerError),
    ],
)
def test_error_for_a_code_is_the_request_error_of_that_code(
    code: str, kind: type[RequestError]
) -> None:
    error = error_for(code, "what was wrong")
    assert type(error) is kind or isinstance(error, kind)
    assert error.code == code
    assert error.message == "what was wrong"


def test_error_for_an_unknown_code_is_read_from_the_status() -> None:
    assert isinstance(error_for("brand_new", "m", 403), PermissionDenied)
    assert isinstance(error_for("brand_new", "m", 502), InternalServerError)
    assert isinstance(error_for("brand_new", "m"), BadRequest)


def test_only_momentary_errors_are_retryable() -> None:
    retryable = {c for c in ("too_many_requests", "unavailable", "internal")}
    for code in ("bad_request", "unauthorized", "permission_denied", "not_found", *retryable):
        assert is_retryable(error_for(code, "m")) == (code in retryable)


def test_decode_error_reads_tidings_error_bodies_only() -> None:
    body = b'{"error": {"code": "unauthorized", "message": "no key"}}'
    assert decode_error(body) == ("unauthorized", "no key")
    assert decode_error(b"<html>Forbidden</html>") is None
    assert decode_error(b'{"error": "nope"}') is None


@pytest.mark.parametrize(
    ("code", "terminal"),
    [
        (1000, False),
        (1001, False),
        (1006, False),
        (1012, False),
        (4000, True),
        (4001, True),
        (4003, True),
        (4499, True),
        (4500, False),
        (4503, False),
        (4599, False),
    ],
)
def test_close_codes_4000_to_4499_are_terminal_and_the_rest_reconnect(
    code: int, terminal: bool
) -> None:
    assert is_terminal_close(code) == terminal


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(403, False), (404, False), (408, True), (429, True), (502, True), (None, True)],
)
def test_a_refused_transport_is_retried_only_after_a_momentary_status(
    status: int | None, retryable: bool
) -> None:
    refused = TransportRefused("ws", status, "the WebSocket upgrade was refused")
    assert refused.is_retryable == retryable
    assert "ws" in str(refused)
