"""Connection tokens and API keys."""

from __future__ import annotations

import time

import jwt
import pytest

from tidings.core.permission import ANONYMOUS, Credentials
from tidings.errors import ConfigError, Unauthorized
from tidings.server.auth import Authenticator, is_valid_api_key

SECRET = "a-secret-long-enough-for-hs256-signatures"
FUTURE = int(time.time()) + 3600


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
    assert credentials == Credentials("alice", ("room:*",), credentials.expires)
    assert credentials.expires is not None


def test_a_fractional_exp_is_rounded_up() -> None:
    exp = int(time.time()) + 60.25
    assert Authenticator(SECRET).authenticate(token({"sub": "a", "exp": exp})).expires == exp + 0.75


def test_a_token_without_exp_is_refused_saying_why() -> None:
    with pytest.raises(Unauthorized, match="no exp claim"):
        Authenticator(SECRET).authenticate(token({"sub": "alice"}))


def test_a_token_without_exp_is_accepted_where_exp_is_not_required() -> None:
    credentials = Authenticator(SECRET, require_exp=False).authenticate(token({"sub": "alice"}))
    assert credentials == Credentials("alice")


@pytest.mark.parametrize("secret", ["short", "x" * 31, "é" * 15])
def test_an_hs256_secret_under_32_bytes_is_refused(secret: str) -> None:
    with pytest.raises(ConfigError, match="at least 32"):
        Authenticator(secret)


def test_an_hs256_secret_of_32_bytes_is_accepted() -> None:
    Authenticator("x" * 32)


@pytest.mark.parametrize(
    ("presented", "message"),
    [
        (None, "token is required"),
        (token({"sub": "a", "exp": int(time.time()) - 10}), "expired"),
        (token({"sub": "a", "exp": FUTURE}, "another-secret-long-enough-for-hs256"), "invalid"),
        ("not-a-jwt", "invalid"),
        (token({"sub": 5, "exp": FUTURE}), "Subject must be a string"),
        (token({"sub": "a", "exp": FUTURE, "channels": "room:*"}), "channels claim must be a list"),
        (jwt.encode({"sub": "a", "exp": FUTURE}, "x" * 64, algorithm="HS512"), "accepts HS256"),
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
