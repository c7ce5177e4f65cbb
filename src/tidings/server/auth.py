"""Connection authentication: verifying JWTs into ``Credentials`` (PROTOCOL.md §8).

No I/O (PyJWT verifies signatures and expiry against the wall clock). A token is
HS256-signed with the node's ``jwt_secret``; ``sub`` is the user id, ``exp`` is
checked when present, and ``channels`` optionally lists channels or patterns.
"""

from __future__ import annotations

import hmac
from typing import Final

import jwt

from tidings.core.permission import ANONYMOUS, Credentials
from tidings.errors import Unauthorized

JWT_ALGORITHMS: Final = ["HS256"]


class Authenticator:
    """Turns a connection's token (or its absence) into credentials."""

    __slots__ = ("_secret",)

    def __init__(self, jwt_secret: str | None) -> None:
        self._secret = jwt_secret

    @property
    def requires_token(self) -> bool:
        """Whether connections must present a token (a secret is configured)."""
        return self._secret is not None

    def authenticate(self, token: str | None) -> Credentials:
        """Verify ``token`` and return who it names.

        Without a configured secret every connection is anonymous and must not send a
        token (it could not be verified, and silently ignoring it would let a client
        believe it is someone it is not).

        Raises:
            Unauthorized: a token is missing, malformed, badly signed or expired, or one
                was given to a server that has no secret to verify it.
        """
        if self._secret is None:
            if token:
                raise Unauthorized(
                    "this server has no jwt_secret configured and accepts only anonymous "
                    "connections: connect without a token"
                )
            return ANONYMOUS
        if not token:
            raise Unauthorized("a connection token is required: send a JWT signed with HS256")
        try:
            claims = jwt.decode(
                token, self._secret, algorithms=JWT_ALGORITHMS, options={"verify_aud": False}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the connection token has expired: get a new one") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the connection token is invalid: {exc}") from None
        return _credentials(claims)


def _credentials(claims: dict[str, object]) -> Credentials:
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        raise Unauthorized("the token's sub claim must be a string")
    channels = claims.get("channels")
    if channels is None:
        return Credentials(sub)
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise Unauthorized("the token's channels claim must be a list of channel names or patterns")
    return Credentials(sub, tuple(channels))


def is_valid_api_key(configured: str | None, presented: str | None) -> bool:
    """Whether ``presented`` matches the configured API key (constant-time).

    With no key configured, the server API is open (the README says so).
    """
    if configured is None:
        return True
    return presented is not None and hmac.compare_digest(configured.encode(), presented.encode())


def api_key_refusal(configured: str | None, presented: str | None) -> str | None:
    """Return why a server API call with ``presented`` is refused, or ``None`` if it is
    not: a missing key and a wrong one are told apart (the caller's fix differs)."""
    if is_valid_api_key(configured, presented):
        return None
    if presented is None:
        return "the server API needs Authorization: Bearer <api key>, and none was sent"
    return "wrong api key: the key sent is not this server's api_key"
