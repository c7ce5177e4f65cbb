"""Signing keys for connection-token tests: RSA and EC key pairs made on the spot, PEM
files of their public halves, and a JWKS served over HTTP by a tiny local server (a
thread running ``http.server``) that counts its fetches."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def rsa_key() -> rsa.RSAPrivateKey:
    """A new 2048-bit RSA key pair (RS256)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ec_key() -> ec.EllipticCurvePrivateKey:
    """A new EC P-256 key pair (ES256)."""
    return ec.generate_private_key(ec.SECP256R1())


def signed(private: PrivateKey, algorithm: str, kid: str | None = None, **claims: Any) -> str:
    """A token of ``alice`` (unless ``claims`` say otherwise) expiring in 10 minutes."""
    body = {"sub": "alice", "exp": int(time.time()) + 600, **claims}
    headers = None if kid is None else {"kid": kid}
    return jwt.encode(body, private, algorithm=algorithm, headers=headers)


def pem_file(directory: Path, public: Any, name: str = "key.pem") -> Path:
    """Write ``public`` as a PEM SubjectPublicKeyInfo file in ``directory``."""
    path = directory / name
    path.write_bytes(public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return path


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
