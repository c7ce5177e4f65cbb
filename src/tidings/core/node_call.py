"""Authenticated calls between the nodes of a ring (docs/modes/hashing.md, "Forwarding").
Pure: the clock's reading arrives as an argument.

A node forwards a server API request to the owner of its channel with one header,
``Tidings-Node-Auth: t=<unix seconds>,v=<ring version>,s=<hex HMAC-SHA256>``, the HMAC
keyed by the ``cluster_secret`` every node of the ring shares, over the method, the
path and query, the time, the ring version and the SHA-256 of the body. So a call
cannot be forged without the secret, nor altered (another channel, another body,
another version) on its way, and a recorded one is refused once its time is more than
``MAX_CLOCK_SKEW_S`` away from the receiver's clock. Within that window a recorded
call could be sent again: a publish carrying an idempotency ``key`` is still applied
once; one without is not protected (the link is meant for a private network, or TLS).

The ring version is the fencing token (DESIGN.md, "Consistent hashing mode"): the
owner refuses a call made with a ring older than its own (``StaleRing``), so a node
that has not yet heard of a new ring cannot make an old owner sequence a key that has
moved; the forwarding node reads the ring again and retries once.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode

from tidings.errors import Unauthorized

NODE_AUTH_HEADER: Final = "tidings-node-auth"
# A relay's upstream connection (WebSocket handshake, SSE request) says it is one: a
# node delivers to relays before its other subscribers (docs/protocol.md §10).
RELAY_HEADER: Final = "tidings-relay"
MIN_CLUSTER_SECRET_BYTES: Final = 32
# Nodes' clocks may differ by this much (NTP keeps them far closer); a call older than
# this is refused as a replay.
MAX_CLOCK_SKEW_S: Final = 30
_MAX_HEADER_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class NodeCall:
    """A verified call from another node of the ring, made with ``ring_version``."""

    ring_version: int


def canonical_target(path: str, query: str) -> str:
    """Return the form of a request's path and query that is signed: the decoded path,
    and the decoded query's pairs sorted and encoded again. Sender and receiver each
    derive it from the URL they see, which their HTTP libraries may quote differently."""
    pairs = sorted(parse_qsl(query, keep_blank_values=True))
    return f"{path}?{urlencode(pairs)}" if pairs else path


def sign_node_call(
    secret: bytes, method: str, target: str, body: bytes, *, now_s: int, ring_version: int
) -> str:
    """Return the ``Tidings-Node-Auth`` value of a call of ``method`` to ``target`` (path
    and query) with ``body``, made at ``now_s`` (Unix seconds) with ``ring_version``."""
    mac = _mac(secret, method, target, body, sent_s=now_s, version=ring_version)
    return f"t={now_s},v={ring_version},s={mac}"


def verify_node_call(
    secret: bytes, header: str, method: str, target: str, body: bytes, *, now_s: int
) -> NodeCall:
    """Return the call ``header`` authenticates, received at ``now_s``.

    Raises:
        Unauthorized: the header is malformed, its signature does not match this
            request under ``secret``, or its time is over ``MAX_CLOCK_SKEW_S`` away.
    """
    fields = _fields(header)
    if fields is None:
        raise Unauthorized("malformed Tidings-Node-Auth header")
    sent_s, ring_version, signature = fields
    expected = _mac(secret, method, target, body, sent_s=sent_s, version=ring_version)
    if not hmac.compare_digest(expected, signature):
        raise Unauthorized("node call signature does not match: is cluster_secret the same?")
    if abs(now_s - sent_s) > MAX_CLOCK_SKEW_S:
        raise Unauthorized(
            f"node call made {now_s - sent_s} s from now; at most {MAX_CLOCK_SKEW_S} s "
            "either way (are the nodes' clocks set?)"
        )
    return NodeCall(ring_version)


def _fields(header: str) -> tuple[int, int, str] | None:
    if len(header) > _MAX_HEADER_CHARS:
        return None
    parts = dict(part.partition("=")[::2] for part in header.split(","))
    sent, version, signature = parts.get("t", ""), parts.get("v", ""), parts.get("s", "")
    if not (_is_number(sent) and _is_number(version) and signature):
        return None
    return int(sent), int(version), signature


def _is_number(text: str) -> bool:
    return 1 <= len(text) <= 20 and text.isascii() and text.isdigit()


def _mac(secret: bytes, method: str, target: str, body: bytes, *, sent_s: int, version: int) -> str:
    digest = hashlib.sha256(body).hexdigest()
    signed = f"{method.upper()}\n{target}\n{sent_s}\n{version}\n{digest}".encode()
    return hmac.new(secret, signed, hashlib.sha256).hexdigest()
