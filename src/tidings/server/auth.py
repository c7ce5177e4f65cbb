"""Connection authentication: verifying JWTs into ``Credentials`` (docs/protocol.md §8).

No I/O here (PyJWT verifies signatures and expiry against the wall clock; public keys
come from ``keys.py``). A token is signed with HS256 and the node's ``jwt_secret``, or
with RS256/ES256 and a public key (``jwt_public_key``, or ``jwt_jwks_url`` by ``kid``):
the token's ``alg`` picks which, and an algorithm the node has no key for is refused
(so a public key is never taken for an HS256 secret). ``sub`` is the user id; ``exp``
is required unless ``jwt_require_exp`` is off (a token without one would never
expire); ``channels`` optionally lists channels or patterns.
"""

from __future__ import annotations

import hmac
import math
from collections.abc import Awaitable
from typing import Final

import jwt

from tidings.core.permission import ANONYMOUS, Credentials
from tidings.errors import ConfigError, Unauthorized
from tidings.server.keys import JwksKeys, PublicKey

# RFC 7518 §3.2: an HS256 key must be at least as long as the hash output.
MIN_HS256_SECRET_BYTES: Final = 32


def check_hs256_secret(secret: str) -> None:
    """Refuse a secret too short to make HS256 signatures hard to forge.

    Raises:
        ConfigError: ``secret`` is under ``MIN_HS256_SECRET_BYTES`` bytes.
    """
    size = len(secret.encode())
    if size < MIN_HS256_SECRET_BYTES:
        raise ConfigError(
            f"jwt_secret is {size} bytes; HS256 needs at least {MIN_HS256_SECRET_BYTES} "
            "(RFC 7518 §3.2); make one with: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )


class Authenticator:
    """Turns a connection's token (or its absence) into credentials."""

    __slots__ = ("_jwks", "_public_key", "_require_exp", "_secret")

    def __init__(
        self,
        jwt_secret: str | None,
        *,
        public_key: tuple[PublicKey, str] | None = None,
        jwks: JwksKeys | None = None,
        require_exp: bool = True,
    ) -> None:
        """Verify HS256 with ``jwt_secret``, RS256/ES256 with ``public_key`` (a key and
        the algorithm it verifies) or with the keys of ``jwks``.

        Raises:
            ConfigError: ``jwt_secret`` is too short (``check_hs256_secret``).
        """
        if jwt_secret is not None:
            check_hs256_secret(jwt_secret)
        self._secret = jwt_secret
        self._public_key = public_key
        self._jwks = jwks
        self._require_exp = require_exp

    @property
    def requires_token(self) -> bool:
        """Whether connections must present a token (a key is configured)."""
        return self._secret is not None or self._public_key is not None or self._jwks is not None

    def authenticate(self, token: str | None) -> Credentials:
        """Verify ``token`` and return who it names.

        Without a configured key every connection is anonymous and must not send a
        token (it could not be verified, and silently ignoring it would let a client
        believe it is someone it is not).

        Raises:
            Unauthorized: a token is missing, malformed, badly signed, expired or without
                ``exp`` (where required), or one was given to a server with no key.
        """
        if not self.requires_token:
            if token:
                raise Unauthorized(
                    "this server has no jwt_secret configured and accepts only anonymous "
                    "connections: connect without a token"
                )
            return ANONYMOUS
        if not token:
            raise Unauthorized("a connection token is required: send a signed JWT")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the connection token is invalid: {exc}") from None
        algorithm = header.get("alg")
        kid = header.get("kid")
        key = self._key_for(algorithm, kid if isinstance(kid, str) else None)
        options: jwt.types.Options = {"verify_aud": False, "require": []}
        if self._require_exp:
            options["require"] = ["exp"]
        try:
            claims = jwt.decode(token, key, algorithms=[str(algorithm)], options=options)
        except jwt.ExpiredSignatureError:
            raise Unauthorized("the connection token has expired: get a new one") from None
        except jwt.MissingRequiredClaimError:
            raise Unauthorized(
                "the connection token has no exp claim, and this server requires one "
                "(a token without exp would never expire)"
            ) from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the connection token is invalid: {exc}") from None
        return _credentials(claims)

    def pending_keys(self, token: str | None) -> Awaitable[None] | None:
        """Return what to await before ``authenticate(token)`` can find the token's key
        (a JWKS fetch for a ``kid`` not held yet), or ``None``: usually, at no cost."""
        if self._jwks is None or not token:
            return None
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            return None  # authenticate says why
        return self._jwks.pending_for(kid if isinstance(kid, str) else None)

    def _key_for(self, algorithm: object, kid: str | None) -> str | PublicKey | jwt.PyJWK:
        if algorithm == "HS256" and self._secret is not None:
            return self._secret
        if algorithm in ("RS256", "ES256"):
            if self._jwks is not None:
                return self._jwks.key_for(kid, str(algorithm))
            if self._public_key is not None and self._public_key[1] == algorithm:
                return self._public_key[0]
        raise Unauthorized(
            f"the connection token is invalid: it is signed with {algorithm!r}; this server "
            f"accepts {' or '.join(self.algorithms)}"
        )

    @property
    def algorithms(self) -> list[str]:
        """The signature algorithms this server has keys for."""
        accepted = ["HS256"] if self._secret is not None else []
        if self._jwks is not None:
            accepted += ["RS256", "ES256"]
        elif self._public_key is not None:
            accepted.append(self._public_key[1])
        return accepted


def _credentials(claims: dict[str, object]) -> Credentials:
    sub = claims.get("sub", "")
    if not isinstance(sub, str):
        raise Unauthorized("the token's sub claim must be a string")
    exp = claims.get("exp")
    # PyJWT has checked that exp, where present, is a number; a fractional one is
    # rounded up, so a connection is never ended while its token is still valid.
    expires = math.ceil(exp) if isinstance(exp, int | float) else None
    channels = claims.get("channels")
    if channels is None:
        return Credentials(sub, expires=expires)
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise Unauthorized("the token's channels claim must be a list of channel names or patterns")
    return Credentials(sub, tuple(channels), expires)


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
