"""Public keys that verify RS256 and ES256 connection tokens (docs/protocol.md §8).

Two sources: one PEM file (``jwt_public_key``), read once at start; or a JSON Web Key
Set at a URL (``jwt_jwks_url``), fetched with httpx at start and again every
``jwt_jwks_refresh``, each token's key chosen by its ``kid``. Verifying a token never
waits for the network: it uses the keys fetched last. A ``kid`` that set does not hold
(the issuer rotated its keys) makes the set be fetched again at once, at most every
``REFETCH_MIN_S``: the transports await that fetch before verifying (``pending_for``),
so the token that named the new key is accepted, not refused.

I/O: reads the PEM file; the JWKS is fetched over HTTP by ``JwksKeys.refresh``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Final

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from tidings.errors import ConfigError, Unauthorized

logger = logging.getLogger(__name__)

PUBLIC_KEY_ALGORITHMS: Final = ("RS256", "ES256")
REFETCH_MIN_S: Final = 10.0
FETCH_TIMEOUT_S: Final = 10.0

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


def load_public_key(path: str) -> tuple[PublicKey, str]:
    """Read a PEM public key and return it with the algorithm it verifies.

    Raises:
        ConfigError: the file cannot be read, is not a PEM public key, or is neither an
            RSA key (RS256) nor an EC P-256 key (ES256).
    """
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"jwt_public_key: cannot read {path}: {exc.strerror}") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ConfigError(f"jwt_public_key: {path} is not a PEM public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    raise ConfigError(
        f"jwt_public_key: {path} must be an RSA key (RS256) or an EC P-256 key (ES256)"
    )


class JwksKeys:
    """The keys of a JWKS URL, by ``kid``; see the module docstring."""

    __slots__ = ("_fetched_at", "_keys", "_refetch", "_refresh_s", "url")

    def __init__(self, url: str, refresh_s: float) -> None:
        self.url = url
        self._refresh_s = refresh_s
        self._keys: dict[str | None, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")  # monotonic time of the last fetch attempt
        self._refetch: asyncio.Task[None] | None = None

    def key_for(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        """Return the key that verifies a token with ``kid`` signed with ``algorithm``.

        Raises:
            Unauthorized: no such key (a fetch is started), or its algorithm differs.
        """
        key = self._keys.get(kid)
        if key is None and kid is None and len(self._keys) == 1:
            key = next(iter(self._keys.values()))  # a set of one key needs no kid
        if key is None:
            self._refetch_soon()
            if not self._keys:
                raise Unauthorized(f"the server has no keys from {self.url} yet; retry shortly")
            raise Unauthorized(
                f"the token's key id {kid!r} is not in the server's key set; retry shortly"
            )
        if key.algorithm_name != algorithm:
            raise Unauthorized(
                f"the token's key {kid!r} signs {key.algorithm_name}, not {algorithm}"
            )
        return key

    async def refresh(self) -> None:
        """Fetch the key set; on failure keep the keys held and log why (WARNING)."""
        self._fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=FETCH_TIMEOUT_S) as http:
                response = await http.get(self.url)
            response.raise_for_status()
            document = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            logger.warning("fetching the JWKS %s failed: %s", self.url, exc)
            return
        self._keys = _parse_key_set(document, self.url)
        logger.info("JWKS %s fetched: %d usable keys", self.url, len(self._keys))

    async def run(self) -> None:
        """Fetch again every ``refresh_s`` (until cancelled); the first ``refresh`` is the
        caller's, at start."""
        while True:
            await asyncio.sleep(self._refresh_s)
            await self.refresh()

    async def close(self) -> None:
        """Stop a fetch started for an unknown ``kid``."""
        if self._refetch is not None:
            self._refetch.cancel()
            await asyncio.gather(self._refetch, return_exceptions=True)

    def pending_for(self, kid: str | None) -> asyncio.Future[None] | None:
        """Return the fetch to await before verifying a token naming ``kid``, or ``None``
        when there is nothing to wait for (the key is held, or the set was fetched less
        than ``REFETCH_MIN_S`` ago)."""
        if kid in self._keys or (kid is None and len(self._keys) == 1):
            return None
        self._refetch_soon()
        if self._refetch is None or self._refetch.done():
            return None
        # Shielded: a client leaving while it waits does not cancel everyone's fetch.
        return asyncio.shield(self._refetch)

    def _refetch_soon(self) -> None:
        if self._refetch is not None and not self._refetch.done():
            return
        if time.monotonic() - self._fetched_at < REFETCH_MIN_S:
            return
        self._refetch = asyncio.get_running_loop().create_task(self.refresh())


def _parse_key_set(document: object, url: str) -> dict[str | None, jwt.PyJWK]:
    """Return the RS256/ES256 keys of a JWKS document by ``kid``, skipping the rest."""
    keys: dict[str | None, jwt.PyJWK] = {}
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        logger.warning("the JWKS at %s has no keys list", url)
        return keys
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWTError, ValueError, KeyError, TypeError) as exc:  # a malformed entry
            logger.warning("JWKS %s: skipping key %r: %s", url, entry.get("kid"), exc)
            continue
        if key.algorithm_name in PUBLIC_KEY_ALGORITHMS:
            kid = entry.get("kid")
            keys[kid if isinstance(kid, str) else None] = key
    return keys
