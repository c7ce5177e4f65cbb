"""One timer for every connection's heartbeat (DESIGN.md: no per-connection timers).

I/O: a single asyncio task per node. Each tick asks every session to send a ping if it
has been silent for its ping interval; a session that wrote recently does nothing, so
a busy connection costs no extra frames.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tidings.hub.sessions import SessionRegistry

logger = logging.getLogger(__name__)


async def run_heartbeats(sessions: SessionRegistry, tick_s: float) -> None:
    """Tick forever (until cancelled), offering each session a heartbeat."""
    while True:
        await asyncio.sleep(tick_s)
        now_s = time.monotonic()
        for session in sessions:
            try:
                session.heartbeat(now_s)
            except Exception:
                logger.exception("heartbeat of %s failed", session.client_id)
