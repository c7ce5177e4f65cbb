"""Moving this node's connections when the ring changes (docs/modes/hashing.md, "When
the ring changes"): asyncio, one task per ring version; the decisions are
``core.ring_moves``'.

When a new version of the ring makes another node the owner of channels this node's
WebSocket and SSE connections hold, each such connection is told ``{"push":
"disconnect", "code": 4503, "reconnect": true, "url": ...}`` (an SSE stream: the
same, as its ``disconnect`` event) and closed, ``ring_move_rate`` per second with
jitter, so the new owners are not hit by every client at once. A connection is
looked at again just before it is told (it may have unsubscribed, or left); a newer
ring replaces the moves under way by its own. Polling clients hold no connection:
their next poll of a channel owned elsewhere is answered 307.

In a transition of the ring the mover asks ``core.routing.Destinations``: a channel
this node gives away moves only once its new owner holds the channel's history
(``server.handover`` triggers the moves then), so a client resuming there is told
``recovered: true``. After a crash the new owner starts the channel in a new epoch, and
a client resuming there is told ``recovered: false``.
With an application's key handler, a ring that gives keys away starts the moves only
once their ``lost`` returned (``server.key_ownership``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from tidings.core.namespace import Namespaces
from tidings.core.placement import Placement, owner_websocket_url
from tidings.core.ring_moves import connection_move, move_times_ms
from tidings.hub.sessions import SessionRegistry
from tidings.transports.close_codes import CLOSE_MOVED
from tidings.transports.connection import StreamConnection
from tidings.transports.websocket import WebSocketSession

logger = logging.getLogger(__name__)

MOVE_REASON = "the ring gave this connection's channels to another node"


class RingMover:
    """Sends this node's connections to the new owners of their channels."""

    def __init__(
        self,
        sessions: SessionRegistry,
        placement: Placement,
        namespaces: Namespaces,
        rate: float,
        *,
        jitter: random.Random | None = None,
    ) -> None:
        """Move ``sessions`` by ``placement`` (read at each new ring), ``rate`` per second."""
        self._sessions = sessions
        self._placement = placement
        self._namespaces = namespaces
        self._rate = rate
        self._jitter = jitter or random.Random()  # spreads reconnects: no secret
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def receive_ring(self) -> None:
        """Start moving the connections the placement's new ring sends elsewhere (in
        place of the moves of an older ring still under way). Call in the event loop."""
        if self._closed:
            return
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._move())

    async def wait_moved(self) -> None:
        """Wait until the moves of the latest ring are all sent (for tests)."""
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    async def close(self) -> None:
        """Stop moving connections, for good: a node that drains (and leaves the
        ring, which sends every key elsewhere) lets the drain close them all."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _moving(self) -> list[StreamConnection]:
        return [
            session
            for session in self._sessions
            if isinstance(session, StreamConnection) and self._owner_of(session) is not None
        ]

    def _owner_of(self, session: StreamConnection) -> str | None:
        move = connection_move(
            session.subscriptions, session.user, self._placement, self._namespaces
        )
        return None if move is None else move.url

    async def _move(self) -> None:
        moving = self._moving()
        if not moving:
            return
        logger.info(
            "the ring moved channels of %d connections elsewhere; moving them at %g/s",
            len(moving),
            self._rate,
        )
        loop = asyncio.get_running_loop()
        began = loop.time()
        times = move_times_ms(self._rate, [self._jitter.random() for _ in moving])
        for session, at_ms in zip(moving, times, strict=True):
            wait_s = began + at_ms / 1000 - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            owner = self._owner_of(session)  # it may have unsubscribed meanwhile
            if owner is None:
                continue
            url = (
                owner_websocket_url(owner)
                if isinstance(session, WebSocketSession)
                else owner.rstrip("/") + "/sse"
            )
            session.disconnect(CLOSE_MOVED, MOVE_REASON, reconnect=True, url=url)
