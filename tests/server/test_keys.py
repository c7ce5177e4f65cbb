"""RS256 and ES256 connection tokens: a PEM public key, or a JWKS served over HTTP
(server/keys.py, server/auth.py). Keys are generated here; the JWKS is served by a tiny
local HTTP server in a thread."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tidings.errors import ConfigError, Unauthorized
from tidings.server.auth import Authenticator
from tidings.server.config import load_settings
from tidings.server.keys import JwksKeys, load_public_key

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def signed(private: PrivateKey, algorithm: str, kid: str | None = None, **claims: Any) -> str:
    body = {"sub": "alice", "exp": int(time.time()) + 600, **claims}
    headers = None if kid is None else {"kid": kid}
    return jwt.encode(body, private, algorithm=algorithm, headers=headers)


def pem_file(tmp_path: Path, public: Any, name: str = "key.pem") -> Path:
    path = tmp_path / name
    path.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


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


class KeySetServer:
    """Serves ``document`` as JSON at ``/jwks`` and counts the fetches."""

    def __init__(self) -> None:
        self.document: dict[str, Any] = {"keys": []}
        self.fetches = 0
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                served.fetches += 1
                body = json.dumps(served.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/jwks"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: tuple[str, PrivateKey]) -> None:
        """Serve the public halves of ``keys`` (kid, private key)."""
        entries = []
        for kid, private in keys:
            algorithm = "RS256" if isinstance(private, rsa.RSAPrivateKey) else "ES256"
            jwk = json.loads(jwt.get_algorithm_by_name(algorithm).to_jwk(private.public_key()))
            entries.append({**jwk, "kid": kid, "use": "sig"})
        self.document = {"keys": entries}

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


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


async def test_an_unknown_kid_is_refused_and_the_key_set_fetched_again(
    key_set: KeySetServer,
) -> None:
    old, new = rsa_key(), rsa_key()
    key_set.publish(("old", old))
    keys = JwksKeys(key_set.url, refresh_s=300)
    await keys.refresh()
    keys._fetched_at = float("-inf")  # as if the last fetch were long ago
    key_set.publish(("old", old), ("new", new))  # the issuer rotates
    auth = Authenticator(None, jwks=keys)
    with pytest.raises(Unauthorized, match="key id 'new' is not in"):
        auth.authenticate(signed(new, "RS256", "new"))
    assert keys._refetch is not None
    await keys._refetch
    assert key_set.fetches == 2
    assert auth.authenticate(signed(new, "RS256", "new")).user == "alice"
    await keys.close()


async def test_a_failed_fetch_keeps_the_keys_held(key_set: KeySetServer) -> None:
    private = ec_key()
    key_set.publish(("k", private))
    keys = JwksKeys(key_set.url, refresh_s=300)
    await keys.refresh()
    key_set.close()
    await keys.refresh()  # the server is gone: logged, keys kept
    assert Authenticator(None, jwks=keys).authenticate(signed(private, "ES256", "k")).user
