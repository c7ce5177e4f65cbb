"""Readiness of Redis as an active probe: a PING on a command connection, on demand and
every interval, failing after a time-out.

A lost pub/sub link is noticed late on a silent network (``redis_link``), so the broker
does not wait for it: while the last probe went unanswered Redis is *unresponsive*, the
broker is not ready and fails its scripts at once, unsent (see "Readiness and
time-outs" in ``redis``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tidings.brokers.redis_link import REDIS_ERRORS

logger = logging.getLogger(__name__)

PROBE_RETRY_S: Final = 0.05


class RedisProbe:
    """PINGs Redis; ``responsive`` says whether the last PING was answered in time."""

    def __init__(self, display_url: str, *, interval_s: float, timeout_s: float) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.responsive = True  # Redis answered the last probe in time
        self._display_url = display_url
        self._client: Redis | RedisCluster | None = None
        self._probing: asyncio.Task[bool] | None = None
        self._prober: asyncio.Task[None] | None = None

    def start(self, client: Redis | RedisCluster) -> None:
        """Probe ``client`` every ``interval_s`` from now on."""
        self._client = client
        self._prober = asyncio.get_running_loop().create_task(
            self._probe_periodically(), name="tidings redis probe"
        )

    async def close(self) -> None:
        """Stop probing; idempotent."""
        tasks = [t for t in (self._prober, self._probing) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def probe(self) -> bool:
        """PING Redis on a command connection; whether it answered in time. Concurrent
        callers share one PING."""
        if self._probing is None:
            self._probing = asyncio.get_running_loop().create_task(
                self._ping(), name="tidings redis ping"
            )
        return await asyncio.shield(self._probing)

    async def _probe_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        pause_s = self.interval_s
        while True:
            await asyncio.sleep(pause_s)
            began = loop.time()
            await self.probe()
            # One PING per interval at most; one that waited out its time-out (a silent
            # Redis, refusing publishes meanwhile) is followed at once, so that the
            # answer after a stall is heard without waiting another interval.
            pause_s = max(PROBE_RETRY_S, self.interval_s - (loop.time() - began))

    async def _ping(self) -> bool:
        client = self._client
        assert client is not None, "started"
        try:
            async with asyncio.timeout(self.timeout_s):
                await client.ping()
        except (*REDIS_ERRORS, TimeoutError) as exc:
            if self.responsive:
                logger.warning(
                    "Redis at %s did not answer a PING within %g s (%s): not ready, "
                    "publishes fail at once until it answers",
                    self._display_url,
                    self.timeout_s,
                    str(exc) or type(exc).__name__,
                )
            self.responsive = False
            return False
        else:
            if not self.responsive:
                logger.info("Redis at %s answers again", self._display_url)
            self.responsive = True
            return True
        finally:
            self._probing = None
