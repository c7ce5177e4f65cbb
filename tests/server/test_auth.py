"""Connection tokens and API keys."""

from __future__ import annotations

import time

import jwt
import pytest

from tidings.core.permission import ANONYMOUS, Credentials
from tidings.errors import Unauthorized
from tidings.server.auth import Authenticator, is_valid_api_key

SECRET = "a-secret-long-enough-for-hs256-signatures"


def token(claims: dict[str, object], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def test_without_a_secret_connections_are_anonymous() -> None:
    assert Authenticator(None).authenticate(None) == ANONYMOUS


def test_without_a_secret_a_token_is_refused_rather_than_ignored() -> None:
    with pytest.raises(Unauthorized, match="no jwt_secret"):
        Authenticator(None).authenticate(token({"sub": "alice"}))


def test_a_valid_token_names_its_user_and_channels() -> None:
    credentials = Authenticator(SECRET).authenticate(
        token({"sub": "alice", "exp": int(time.time()) + 60, "channels": ["room:*"]})
    )
    assert credentials == Credentials("alice", ("room:*",))


@pytest.mark.parametrize(
    ("presented", "message"),
    [
        (None, "token is required"),
        (token({"sub": "a", "exp": int(time.time()) - 10}), "expired"),
        (token({"sub": "a"}, "another-secret-long-enough-for-hs256"), "invalid"),
        ("not-a-jwt", "invalid"),
        (token({"sub": 5}), "Subject must be a string"),
        (token({"sub": "a", "channels": "room:*"}), "channels claim must be a list"),
    ],
)
def test_bad_tokens_are_unauthorized_with_a_reason(presented: str | None, message: str) -> None:
    with pytest.raises(Unauthorized, match=message):
        Authenticator(SECRET).authenticate(presented)


def test_api_key_check_is_open_without_a_key_and_exact_with_one() -> None:
    assert is_valid_api_key(None, None)
    assert is_valid_api_key("k1", "k1")
    assert not is_valid_api_key("k1", "k2")
    assert not is_valid_api_key("k1", None)
