"""RS256 and ES256 connection tokens: a PEM public key, or a JWKS served over HTTP
(server/keys.py, server/auth.py). Keys are generated here; the JWKS is served by a tiny
local HTTP server in a thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from tests.support.jwks import KeySetServer, ec_key, pem_file, rsa_key, signed
from tidings.errors import ConfigError, Unauthorized
from tidings.server.auth import Authenticator
from tidings.server.config import load_settings
from tidings.server.keys import JwksKeys, load_public_key


@pytest.mark.parametrize(("make", "algorithm"), [(rsa_key, "RS256"), (ec_key, "ES256")])
def test_a_token_signed_with_the_private_key_of_a_pem_public_key_is_accepted(
    tmp_path: Path, make: Any, algorithm: str
) -> None:
    private = make()
    public_key = load_public_key(str(pem_file(tmp_path, private.public_key())))
    assert public_key[1] == algorithm
    auth = Authenticator(None, public_key=public_key)
    assert auth.requires_token
    assert auth.authenticate(signed(private, algorithm)).user == "alice"
    with pytest.raises(Unauthorized, match="invalid"):
        auth.authenticate(signed(make(), algorithm))  # another key pair


def test_a_token_of_another_algorithm_than_the_public_key_is_refused(tmp_path: Path) -> None:
    auth = Authenticator(
        None, public_key=load_public_key(str(pem_file(tmp_path, ec_key().public_key())))
    )
    with pytest.raises(Unauthorized, match="accepts ES256"):
        auth.authenticate(signed(rsa_key(), "RS256"))


def test_an_hs256_token_signed_with_the_public_key_bytes_is_refused(tmp_path: Path) -> None:
    """Algorithm confusion: the public key is never taken for an HS256 secret."""
    path = pem_file(tmp_path, rsa_key().public_key())
    # PyJWT refuses to sign so: the forgery is made by hand.
    signing_input = b".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
        for part in ({"alg": "HS256", "typ": "JWT"}, {"sub": "mallory", "exp": 2**33})
    )
    mac = hmac.new(path.read_bytes(), signing_input, hashlib.sha256).digest()
    forged = (signing_input + b"." + base64.urlsafe_b64encode(mac).rstrip(b"=")).decode()
    auth = Authenticator(None, public_key=load_public_key(str(path)))
    with pytest.raises(Unauthorized, match="accepts RS256"):
        auth.authenticate(forged)


def test_a_pem_that_is_not_rsa_or_p256_is_refused_at_load(tmp_path: Path) -> None:
    path = pem_file(tmp_path, ed25519.Ed25519PrivateKey.generate().public_key())
    with pytest.raises(ConfigError, match=r"RSA key \(RS256\) or an EC P-256 key"):
        load_public_key(str(path))
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(str(tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_public_key(str(tmp_path / "missing.pem"))


def test_settings_refuse_a_short_secret_and_an_unreadable_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="jwt_secret is 5 bytes; HS256 needs at least 32"):
        load_settings(environ={"TIDINGS_JWT_SECRET": "short"})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(environ={"TIDINGS_JWT_PUBLIC_KEY": str(tmp_path / "none.pem")})
    settings = load_settings(
        environ={
            "TIDINGS_JWT_JWKS_URL": "https://id.example/jwks",
            "TIDINGS_JWT_REQUIRE_EXP": "false",
        }
    )
    assert settings.jwt_jwks_url == "https://id.example/jwks"
    assert not settings.jwt_require_exp
    assert settings.jwt_jwks_refresh_s == 300


# -- JWKS ---------------------------------------------------------------------------


@pytest.fixture
def key_set() -> Iterator[KeySetServer]:
    server = KeySetServer()
    try:
        yield server
    finally:
        server.close()


async def test_jwks_keys_verify_tokens_by_kid(key_set: KeySetServer) -> None:
    first, second = rsa_key(), ec_key()
    key_set.publish(("k1", first), ("k2", second))
    keys = JwksKeys(key_set.url, refresh_s=300)
    await keys.refresh()
    auth = Authenticator(None, jwks=keys)
    assert auth.authenticate(signed(first, "RS256", "k1")).user == "alice"
    assert auth.authenticate(signed(second, "ES256", "k2", sub="bob")).user == "bob"
    with pytest.raises(Unauthorized, match="invalid"):
        auth.authenticate(signed(rsa_key(), "RS256", "k1"))  # not k1's private key
    with pytest.raises(Unauthorized, match="signs ES256, not RS256"):
        auth.authenticate(signed(rsa_key(), "RS256", "k2"))


async def test_a_token_of_a_new_kid_waits_for_the_key_set_fetched_again(
    key_set: KeySetServer,
) -> None:
    old, new = rsa_key(), rsa_key()
    key_set.publish(("old", old))
    keys = JwksKeys(key_set.url, refresh_s=300)
    await keys.refresh()
    auth = Authenticator(None, jwks=keys)
    token = signed(new, "RS256", "new")
    assert auth.pending_keys(signed(old, "RS256", "old")) is None  # a held key: no wait
    assert auth.pending_keys(token) is None  # fetched just now: not again so soon
    with pytest.raises(Unauthorized, match="key id 'new' is not in"):
        auth.authenticate(token)
    keys._fetched_at = float("-inf")  # as if the last fetch were long ago
    key_set.publish(("old", old), ("new", new))  # the issuer rotates
    pending = auth.pending_keys(token)
    assert pending is not None
    assert auth.pending_keys(token) is not None  # the same fetch, shared
    await pending
    assert key_set.fetches == 2
    assert auth.authenticate(token).user == "alice"
    assert auth.pending_keys(token) is None
    await keys.close()


async def test_malformed_and_foreign_entries_of_a_key_set_are_skipped(
    key_set: KeySetServer,
) -> None:
    private = ec_key()
    key_set.publish(("good", private))
    key_set.document["keys"] += [
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},  # a symmetric key: never used
        {"kid": "no-type"},
        "not an object",
    ]
    keys = JwksKeys(key_set.url, refresh_s=300)
    await keys.refresh()
    auth = Authenticator(None, jwks=keys)
    assert auth.authenticate(signed(private, "ES256", "good")).user == "alice"
    assert set(keys._keys) == {"good"}


async def test_a_failed_fetch_keeps_the_keys_held(key_set: KeySetServer) -> None:
    private = ec_key()
    key_set.publish(("k", private))
    keys = JwksKeys(key_set.url, refresh_s=300)
    await keys.refresh()
    key_set.close()
    await keys.refresh()  # the server is gone: logged, keys kept
    assert Authenticator(None, jwks=keys).authenticate(signed(private, "ES256", "k")).user
