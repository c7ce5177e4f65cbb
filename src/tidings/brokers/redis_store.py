"""Publications kept in Redis: the Redis broker's publish, history read and epoch reset,
each one script (``redis_scripts``) sent by the runner, behind the gate that fails a call
at once, unsent, while Redis does not answer the readiness probe (``redis_probe``).

What a publish and a read mean in Redis (offsets, history, dedupe, epochs) is in the
``redis`` module docstring and ``redis_scripts``; here the arguments are built and the
replies read, and Redis failures become ``BrokerError``.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tidings.brokers.base import HistoryRead, PublishResult
from tidings.brokers.redis_link import REDIS_ERRORS, text_of
from tidings.brokers.redis_probe import RedisProbe
from tidings.brokers.redis_runner import ScriptRunner, ScriptUnanswered
from tidings.brokers.redis_scripts import (
    PUBLISH,
    READ,
    RESET,
    ChannelKeys,
    RedisScript,
    decode_stored,
    encode_body,
)
from tidings.brokers.redis_target import RedisTarget
from tidings.clock import Clock
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions, dedupe_key
from tidings.core.history import HistoryOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay, decide_recovery, latest
from tidings.errors import BrokerError, BrokerUnavailable


class EpochCandidates:
    """Fresh epochs for the scripts, one per call: a random part drawn once per node and
    a counter. A candidate becomes a channel's epoch only when Redis lost (or never had)
    the channel's head, but every script needs one at hand, so drawing 64 random bits per
    publish (``random_epoch``, some 3 µs) would be most of its cost for nothing; unique
    per node and random across nodes, a candidate is as new as a random one."""

    def __init__(self) -> None:
        self._base = secrets.token_urlsafe(8)  # 11 of A-Z a-z 0-9 _ -
        self._count = itertools.count(1)

    def __call__(self) -> str:
        """Return a candidate no other call (of any node) returns: at most 28 characters
        of ``A-Za-z0-9_-``."""
        return "%s-%x" % (self._base, next(self._count))  # noqa: UP031  (the fastest)


class RedisStore:
    """Publish and read channels in Redis with the scripts; see the module docstring."""

    def __init__(
        self,
        target: RedisTarget,
        display_url: str,
        namespaces: Namespaces,
        *,
        clock: Clock,
        dedupe: DedupeOptions,
        epoch_factory: Callable[[], str] | None,
        probe: RedisProbe,
        publish_timeout_s: float,
    ) -> None:
        """Keep channels of ``namespaces`` in the Redis of ``target`` (``display_url``
        names it in errors); ``epoch_factory`` draws new epochs (``EpochCandidates``
        when ``None``); see ``RedisBroker`` for the other arguments."""
        self._target = target
        self._display_url = display_url
        self._namespaces = namespaces
        self._clock = clock
        self._dedupe = dedupe
        self._epoch_factory = epoch_factory or EpochCandidates()
        self._probe = probe
        self._publish_timeout_s = publish_timeout_s
        self._publish_command = "SPUBLISH" if target.cluster else "PUBLISH"
        self._scripts: ScriptRunner | None = None
        self._closed = False

    def start(self, client: Redis | RedisCluster) -> None:
        """Send the scripts through ``client`` from now on."""
        self._scripts = ScriptRunner(
            client, trust_restarts=self._target.trust_restarts, batch=self._target.batch
        )

    async def close(self) -> None:
        """Stop the scripts in flight (their callers get ``CancelledError``); later calls
        fail with ``BrokerUnavailable``."""
        self._closed = True
        if self._scripts is not None:
            await self._scripts.close()

    async def publish(
        self,
        channel: ChannelName,
        topic: str,
        data: bytes,
        *,
        key: str | None,
        info: ClientInfo | None,
        floor: Position | None,
    ) -> PublishResult:
        """Publish ``data`` in ``channel`` (PUBLISHed on ``topic``) with one script; a
        head of ``floor``'s epoch behind ``floor`` moves to a new epoch first.

        Raises:
            BrokerError: Redis failed or is unreachable; the publication may or may not
                have been made (retry with the same ``key``).
            BrokerUnavailable: it was not sent, and will not be published.
        """
        history = self._namespaces.options_for(channel).history
        now_ms = self._clock.now_ms()
        args = (
            self._epoch_factory(),
            encode_body(data, now_ms, key, info),
            now_ms,
            "" if key is None else dedupe_key(key, info),
            history.size,
            history.ttl_ms,
            max(1, self._dedupe.window_ms),
            self._dedupe.max_keys,
            topic,
            self._publish_command,
            channel,
            "" if floor is None else floor.epoch,
            0 if floor is None else floor.offset,
        )
        what = f"publishing in {channel}"
        try:
            reply = await self._run(PUBLISH, channel, args, what, self._publish_timeout_s)
        except ScriptUnanswered as exc:
            if not exc.sent:
                raise BrokerUnavailable(
                    f"{what} failed: Redis at {self._display_url} did not answer within "
                    f"{exc.timeout_s:g} s; it was not sent and will not be published"
                ) from exc
            raise BrokerError(
                f"{what} failed: Redis at {self._display_url} did not answer within "
                f"{exc.timeout_s:g} s; it may have been published; retry with the same key"
            ) from exc
        epoch, offset, duplicate = reply
        return PublishResult(Position(text_of(epoch), int(offset)), duplicate=bool(duplicate))

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``) with one script.

        Raises:
            BrokerError: Redis failed or is unreachable.
        """
        options = self._namespaces.options_for(channel).history
        wanted = options.size if limit is None else min(max(limit, 0), options.size)
        if since is None:
            mode, since_epoch, since_offset = ("latest" if wanted > 0 else "head"), "", 0
        else:
            mode, since_epoch, since_offset = "after", since.epoch, since.offset
        args = (self._epoch_factory(), options.ttl_ms, mode, since_epoch, since_offset)
        reply = await self._run(
            READ, channel, (*args, max(1, wanted)), f"reading the history of {channel}"
        )
        epoch, head_offset = text_of(reply[0]), int(reply[1])
        entries = reply[2] if mode == "after" else list(reversed(reply[2]))
        try:
            publications = [
                decode_stored(channel, epoch, id_, fields[1]) for id_, fields in entries
            ]
        except (msgspec.ValidationError, ValueError, IndexError) as exc:
            raise BrokerError(f"the history of {channel} holds an unreadable entry") from exc
        retained = _retained(publications, head_offset, options, self._clock.now_ms())
        head = Position(epoch, head_offset)
        if since is None:
            return HistoryRead(head, Replay(latest(retained, limit)))
        return HistoryRead(head, decide_recovery(since, epoch, head_offset, retained, limit))

    async def reset(self, channel: ChannelName, since: Position) -> str:
        """Move ``channel`` to a new epoch if its head is of ``since``'s epoch but behind
        it (Redis rolled back in place); return the head's epoch afterwards.

        Raises:
            BrokerError: Redis failed or is unreachable.
        """
        reply = await self._run(
            RESET, channel, (since.epoch, since.offset, self._epoch_factory()), "resetting"
        )
        return text_of(reply[0])

    async def _run(
        self,
        script: RedisScript,
        channel: ChannelName,
        args: Sequence[str | bytes | int],
        what: str,
        timeout_s: float | None = None,
    ) -> Any:
        keys = ChannelKeys.of(self._target.prefix, channel).as_tuple()
        return await self.run_keys(script, keys, args, what, timeout_s)

    async def run_keys(
        self,
        script: RedisScript,
        keys: tuple[str, ...],
        args: Sequence[str | bytes | int],
        what: str,
        timeout_s: float | None = None,
    ) -> Any:
        """Run ``script``; fail at once, sending nothing, while Redis is unresponsive.

        Raises:
            BrokerUnavailable: Redis did not answer the last probe; nothing was sent.
            BrokerError: Redis failed.
            ScriptUnanswered: no answer within ``timeout_s``.
        """
        if self._closed or self._scripts is None:
            raise BrokerUnavailable(f"{what} failed: the Redis broker is not started")
        if not self._probe.responsive:
            raise BrokerUnavailable(
                f"{what} failed: Redis at {self._display_url} did not answer a PING within "
                f"{self._probe.timeout_s:g} s; nothing was sent"
            )
        try:
            return await self._scripts.run(script, keys, args, timeout_s=timeout_s)
        except REDIS_ERRORS as exc:
            raise BrokerError(f"{what} failed: {exc}") from exc


def _retained(
    publications: list[Publication], head_offset: int, options: HistoryOptions, now_ms: int
) -> list[Publication]:
    """Keep what the namespace retains: the last ``size`` offsets, evicting from the
    front those older than the ttl (as ``ChannelHistory`` does)."""
    first_kept = head_offset - options.size + 1
    oldest_ms = now_ms - options.ttl_ms
    start = 0
    while start < len(publications) and (
        publications[start].offset < first_kept or publications[start].ts < oldest_ms
    ):
        start += 1
    return publications[start:]
