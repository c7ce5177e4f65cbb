"""One attempt at filling a channel's gap from history, as the pub/sub brokers make it
(``redis_channels``, ``nats_live``): their sync tasks loop over it until the gap is filled
or the channel is no longer followed.

A failed attempt must not end the task (the channel would stall, its arrivals held for
ever): it is logged — at WARNING for a broker failure, which retrying mends, at ERROR
with its traceback for anything else, a bug — and the next attempt waits the backoff's
next delay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from tidings.core.backoff import Backoff
from tidings.errors import BrokerError

logger = logging.getLogger(__name__)


async def fill_gap_once(
    channel: str,
    fill: Callable[[], Awaitable[None]],
    delay: Backoff,
    *,
    on_failure: Callable[[], None],
) -> None:
    """Run ``fill``; if it raises, call ``on_failure`` at once (the gap is still there),
    log the failure and wait ``delay``'s next delay."""
    try:
        await fill()
    except Exception as exc:  # the task boundary: the channel must not stall
        on_failure()
        expected = isinstance(exc, BrokerError)
        logger.log(
            logging.WARNING if expected else logging.ERROR,
            "filling the gap of %s failed: %s",
            channel,
            exc,
            exc_info=not expected,
        )
        await asyncio.sleep(delay.next_delay_s())
