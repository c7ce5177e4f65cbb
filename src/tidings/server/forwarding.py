"""Forwarding the server API to a channel's owner (docs/modes/hashing.md, "Forwarding").

I/O: HTTP to the other nodes of the ring, with httpx. In the consistent-hashing mode
each channel has one owner, which alone assigns its offsets and keeps its history; a
server API call about a channel (publish, history, presence) reaching another node is
sent on to the owner, signed with the ``cluster_secret`` (``core.node_call``), and the
owner's answer, status and body, goes back to the caller unchanged.

Theory of operation
-------------------
``OwnerLink.serve`` decides, for one channel, where a call is answered:

* no ring (every other mode): here;
* a call from a client (the application's backend): here if this node owns the
  channel, else forwarded to the owner with this node's ring version. An owner that
  refuses it as made with an old ring (``stale_ring``, 409) makes this node read the
  ring again (etcd; a static ring cannot change) and place the channel once more:
  served here if it is now this node's, else forwarded again, once; refused again, the
  caller hears ``unavailable`` (503). An owner that cannot be reached is
  ``unavailable`` too: never a 200 for a publication that was not published;
* a call from another node (signed): served here only if this node owns the channel
  in its ring and that ring is not newer than the caller's, else refused with
  ``StaleRing``. A forwarded call is never forwarded again, so calls cannot loop
  between nodes that disagree, and a node that missed a ring change cannot make an
  old owner sequence a key that has moved: no two sequencers for one key.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final, Literal

import httpx
import msgspec

from tidings.core.channel import ChannelName
from tidings.core.node_call import (
    NODE_AUTH_HEADER,
    NodeCall,
    canonical_target,
    sign_node_call,
    verify_node_call,
)
from tidings.core.placement import Here, Placement
from tidings.core.routing import FollowingPlacement, OwnerRouting, RingPlacement
from tidings.errors import StaleRing, TidingsError, Unauthorized, Unavailable

logger = logging.getLogger(__name__)

# An HTTP answer: status, headers, body.
Parts = tuple[int, dict[str, str], bytes]
# Reads the ring again (etcd); ``None`` for a static ring.
RingRefresh = Callable[[], Awaitable[None]]
# A request header by lower-case name.
HeaderLookup = Callable[[str], str | None]

# Long enough for an owner's publish under load (its own publish_timeout is 1.5 s).
FORWARD_TIMEOUT_S: Final = 5.0
# What became of each call sent to an owner (``tidings_forwarded_total``).
ForwardOutcome = Literal["answered", "stale_ring", "unreachable"]
FORWARD_OUTCOMES: Final[tuple[ForwardOutcome, ...]] = ("answered", "stale_ring", "unreachable")
_STALE_RING_STATUS: Final = 409


class _ErrorBody(msgspec.Struct):
    code: str = ""


class _ErrorAnswer(msgspec.Struct):
    error: _ErrorBody


class OwnerLink:
    """One node's link to the owners of the channels it does not own."""

    def __init__(
        self,
        placement: Placement,
        cluster_secret: str | None,
        refresh: RingRefresh | None = None,
        *,
        clock: Callable[[], float] = time.time,
        timeout_s: float = FORWARD_TIMEOUT_S,
    ) -> None:
        """Forward by ``placement`` (no ring in it: every call is served here), signing
        with ``cluster_secret`` (``None``: no call is forwarded or taken from a node);
        ``refresh`` reads the ring again after an owner refused this node's as old; an
        owner silent for ``timeout_s`` is ``unavailable``."""
        self._ring: OwnerRouting | None = (
            placement if isinstance(placement, RingPlacement | FollowingPlacement) else None
        )
        self._secret = None if cluster_secret is None else cluster_secret.encode()
        self._refresh = refresh
        self._clock = clock
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self.forwarded: dict[str, int] = dict.fromkeys(FORWARD_OUTCOMES, 0)
        """Calls sent to owners, by outcome (read by the metrics at scrape time)."""

    @property
    def has_ring(self) -> bool:
        """Whether this node routes by a ring (some channels may be owned elsewhere)."""
        return self._ring is not None

    @property
    def is_forwarding_off(self) -> bool:
        """Whether this node routes by a ring but has no ``cluster_secret`` to forward
        with (its calls about others' channels are refused)."""
        return self._ring is not None and self._secret is None

    def verify(
        self, header: HeaderLookup, method: str, target: str, body: bytes
    ) -> NodeCall | None:
        """Return the node call a request's ``Tidings-Node-Auth`` header authenticates,
        or ``None`` without that header (a client's call, admitted by ``api_key``).

        Raises:
            Unauthorized: the header is there but does not verify, or this node has no
                ``cluster_secret``.
        """
        value = header(NODE_AUTH_HEADER)
        if value is None:
            return None
        if self._secret is None:
            raise Unauthorized("this node has no cluster_secret and takes no calls from nodes")
        return verify_node_call(self._secret, value, method, target, body, now_s=int(self._clock()))

    async def serve(
        self,
        channel: ChannelName,
        call: NodeCall | None,
        request: tuple[str, str, bytes],
        local: Callable[[], Awaitable[Parts]],
    ) -> Parts:
        """Answer a call about ``channel`` here (``local``) or from its owner (see the
        module docstring).

        Args:
            channel: the channel the call is about.
            call: the verified node call, or ``None`` for a client's.
            request: its method, path and query of the route (``/api/history?channel=doc:9``,
                without any base path), body.
            local: answers it on this node.

        Raises:
            StaleRing: a node's call this node will not serve.
            Unavailable: the owner cannot be reached, or kept refusing this node's ring.
        """
        ring = self._ring
        if ring is None:
            return await local()
        if call is not None:
            if call.ring_version > ring.ring_version:
                await self._refresh_ring()  # the caller knows a newer ring: learn it first
            own_version = ring.ring_version
            if call.ring_version < own_version or not isinstance(ring.place(channel), Here):
                raise StaleRing(channel, call.ring_version, own_version)
            return await local()
        for attempt in range(2):
            place = ring.place(channel)
            if isinstance(place, Here):
                return await local()
            if self._secret is None:
                raise Unavailable(
                    f"channel {channel} is owned by {place.url}, and this node cannot forward "
                    "to it: set the same cluster_secret on every node of the ring"
                )
            parts = await self.send(channel, place.url, request, ring.ring_version)
            if not is_stale_ring(parts):
                self.forwarded["answered"] += 1
                return parts
            self.forwarded["stale_ring"] += 1
            if attempt == 0:
                await self._refresh_ring()
        raise Unavailable(f"the owner of {channel} refused this node's ring twice; retry")

    async def send(
        self, channel: ChannelName, owner_url: str, request: tuple[str, str, bytes], version: int
    ) -> Parts:
        """Send ``request`` (method, path and query, body) about ``channel`` to the node
        at ``owner_url``, signed with ring ``version``; return its answer.

        Raises:
            Unavailable: this node has no ``cluster_secret``, or the node could not be
                reached or did not answer.
        """
        if self._secret is None:
            raise Unavailable(
                f"channel {channel} is sequenced at {owner_url}, and this node cannot "
                "forward to it: set the same cluster_secret on every node of the ring"
            )
        method, target, body = request
        url = httpx.URL(owner_url.rstrip("/") + target)
        # Signed as the route sees it, without the owner's base path (public_url may
        # have one); the owner derives the same from the path and query it receives.
        path, _, query = target.partition("?")
        signed = canonical_target(path, query)
        auth = sign_node_call(
            self._secret, method, signed, body, now_s=int(self._clock()), ring_version=version
        )
        headers = {NODE_AUTH_HEADER: auth}
        if method == "POST":
            headers["content-type"] = "application/json"
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._timeout_s)
        try:
            response = await self._client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            self.forwarded["unreachable"] += 1
            logger.warning("forwarding to the owner of %s (%s) failed: %r", channel, owner_url, exc)
            if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                raise Unavailable(
                    f"the owner of channel {channel} cannot be reached; not sent; retry"
                ) from None
            # Sent, and no answer: as docs/protocol.md §7 says of a broker's silence.
            raise Unavailable(
                f"the owner of channel {channel} did not answer: it may have been done; "
                "retry (a publish with the same key)"
            ) from None
        answer = {"content-type": response.headers.get("content-type", "application/json")}
        return response.status_code, answer, response.content

    async def _refresh_ring(self) -> None:
        if self._refresh is None:
            return
        try:
            await self._refresh()
        except TidingsError as exc:  # etcd away: retry with the ring known
            logger.warning("reading the ring again failed: %s", exc)

    async def aclose(self) -> None:
        """Close the connections to the other nodes."""
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def is_stale_ring(parts: Parts) -> bool:
    """Whether an answer is a ``stale_ring`` refusal (409)."""
    status, _, body = parts
    if status != _STALE_RING_STATUS:
        return False
    try:
        return msgspec.json.decode(body, type=_ErrorAnswer).error.code == "stale_ring"
    except msgspec.DecodeError:
        return False
