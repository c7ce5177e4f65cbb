"""The channels' log on JetStream: publishing with gap-free offsets (optimistic
concurrency per channel, idempotency keys claimed in ``nats_keys``) and reading a
channel's history back from its head. Network I/O through ``nats_stream`` and
``nats_keys``; see ``brokers.nats`` for the scheme and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from tidings.brokers.base import HistoryRead, PublishResult
from tidings.brokers.nats_keys import KeyIndex, KeyRecord
from tidings.brokers.nats_stream import (
    CONFLICTS,
    STREAM_NOT_FOUND,
    HistoryStream,
    JetStreamError,
    StoredPublication,
    StreamMissing,
    encode_body,
)
from tidings.brokers.nats_subjects import history_subject
from tidings.clock import Clock
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions, dedupe_key
from tidings.core.history import HistoryOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay, decide_recovery, latest
from tidings.errors import BrokerError, BrokerUnavailable

logger = logging.getLogger(__name__)

CLAIM_POLL_S: Final = 0.01
# How much older than a stale claim a publication may be stamped and still be stored
# after it: far more than a publish can wait (its time-out) or a reconnect takes.
KEY_SEARCH_MARGIN_MS: Final = 60_000

# Returns the history stream if NATS is reachable now; raises BrokerUnavailable if not.
StreamGetter = Callable[[str], HistoryStream]


@dataclass(frozen=True, slots=True)
class _Head:
    """A channel's last stored publication as a publisher needs it."""

    seq: int
    epoch: str
    offset: int


@dataclass(slots=True, eq=False)
class _Sequencer:
    """Publishes of one channel on this node take turns; ``head`` is the last one's."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    head: _Head | None = None
    users: int = 0


class _AlreadyPublished(Exception):
    """A stale claim's publication turned up while its taker was publishing it again."""

    def __init__(self, position: Position) -> None:
        super().__init__(position)
        self.position = position


class ChannelLog:
    """Publishes into and reads the channels of the history stream; see the module
    docstring. ``epoch`` is the stream's (of channels never published to), kept up to
    date by the broker whenever it finds the stream."""

    def __init__(
        self,
        stream_of: StreamGetter,
        keys: KeyIndex,
        namespaces: Namespaces,
        *,
        prefix: str,
        clock: Clock,
        dedupe: DedupeOptions,
        publish_timeout_s: float,
    ) -> None:
        self._stream_of = stream_of
        self._keys = keys
        self._namespaces = namespaces
        self._prefix = prefix
        self._clock = clock
        self._dedupe = dedupe
        self._publish_timeout_s = publish_timeout_s
        # A claim on a key this old is its node's that died or gave up (see nats_keys).
        self._claim_stale_ms = int(2_000 * publish_timeout_s)
        self._sequencers: dict[ChannelName, _Sequencer] = {}
        self.epoch = ""

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish ``data`` in ``channel`` (see the module docstring).

        Raises:
            BrokerUnavailable: NATS is not reachable now; nothing was sent.
            BrokerError: NATS failed or did not answer in time; the publication may
                or may not have been made (retry with the same ``key``).
        """
        what = f"publishing in {channel}"
        self._stream_of(what)
        sequencer = self._sequencers.get(channel)
        if sequencer is None:
            sequencer = self._sequencers[channel] = _Sequencer()
        sequencer.users += 1
        sent = [False]
        try:
            async with asyncio.timeout(self._publish_timeout_s), sequencer.lock:
                return await self._publish_in_turn(
                    channel, sequencer, data=data, key=key, info=info, sent=sent
                )
        except TimeoutError as exc:
            if not sent[0]:
                raise BrokerUnavailable(
                    f"{what} failed: not sent within {self._publish_timeout_s:g} s (NATS slow "
                    "to answer, or too many publishes of this channel waiting their turn on "
                    "this node); it will not be published"
                ) from exc
            raise BrokerError(
                f"{what} failed: NATS did not answer within {self._publish_timeout_s:g} s; "
                "it may have been published; retry with the same key"
            ) from exc
        finally:
            sequencer.users -= 1
            if sequencer.users == 0 and self._sequencers.get(channel) is sequencer:
                del self._sequencers[channel]  # memory stays bounded by publishes under way

    async def _publish_in_turn(
        self,
        channel: ChannelName,
        sequencer: _Sequencer,
        *,
        data: bytes,
        key: str | None,
        info: ClientInfo | None,
        sent: list[bool],
    ) -> PublishResult:
        now_ms = self._clock.now_ms()
        if key is None:
            position = await self._store(
                channel, sequencer, data=data, now_ms=now_ms, key=None, info=info, sent=sent
            )
            return PublishResult(position)
        remembered = dedupe_key(key, info)
        keys = self._keys
        while True:
            record, revision = await keys.read(channel, remembered)
            # Read the clock anew each time round: waiting on another's claim is what
            # makes it stale (a clock read once would never let this loop take it over).
            now_ms = self._clock.now_ms()
            if record is not None:
                age_ms = now_ms - record.ts
                if record.state == "published" and age_ms <= self._dedupe.window_ms:
                    return PublishResult(record.position, duplicate=True)
                if record.state == "claimed" and age_ms <= self._claim_stale_ms:
                    await asyncio.sleep(CLAIM_POLL_S)  # another node is publishing the key
                    continue
            claim = KeyRecord("claimed", now_ms)
            claimed = await keys.write(channel, remembered, claim, revision=revision)
            if claimed is None:
                continue  # another node claimed it first: see what it made of it
            found = None
            stale_since_ms = None
            if record is not None and record.state == "claimed":
                # A stale claim: its node died or failed, maybe after publishing.
                stale_since_ms = record.ts
                found = await self._find_key(channel, remembered, stale_since_ms)
            duplicate = found is not None
            if found is None:
                try:
                    found = await self._store(
                        channel,
                        sequencer,
                        data=data,
                        now_ms=now_ms,
                        key=key,
                        info=info,
                        sent=sent,
                        recheck=None if stale_since_ms is None else (remembered, stale_since_ms),
                    )
                except _AlreadyPublished as already:
                    found, duplicate = already.position, True
                except BrokerUnavailable:  # nothing was sent: a retry may claim it at once
                    released = KeyRecord("released", now_ms)
                    with contextlib.suppress(BrokerError):
                        await keys.write(channel, remembered, released, revision=claimed)
                    raise
            done = KeyRecord("published", now_ms, found.epoch, found.offset)
            try:
                await keys.write(channel, remembered, done, revision=claimed)
            except BrokerError as exc:  # published all the same: the claim goes stale
                logger.warning("recording key %r of %s failed: %s", key, channel, exc)
            return PublishResult(found, duplicate=duplicate)

    async def _store(
        self,
        channel: ChannelName,
        sequencer: _Sequencer,
        *,
        data: bytes,
        now_ms: int,
        key: str | None,
        info: ClientInfo | None,
        sent: list[bool],
        recheck: tuple[str, int] | None = None,
    ) -> Position:
        """Store the next offset of ``channel`` by optimistic concurrency; see the module
        docstring. Retries only what the stream refused (never an unanswered one).

        ``recheck`` (a key and a time) is given when this publish took over a stale claim:
        the claim's own publish may have been in a leader's log, unapplied, when the
        history was searched, and a new leader applies it before anything newer; so each
        refusal is first checked for it (``_AlreadyPublished``), never published again.
        """
        what = f"publishing in {channel}"
        subject = history_subject(self._prefix, channel)
        while True:
            stream = self._stream_of(what)
            head = sequencer.head or await self._read_head(channel, fresh_epoch=True)
            offset = head.offset + 1
            body = encode_body(
                head.epoch, offset=offset, prev=head.seq, data=data, ts=now_ms, key=key, info=info
            )
            stream = self._stream_of(what)  # checked again: nats-py would queue it
            sent[0] = True
            try:
                seq = await stream.publish(
                    subject, body, expected_last=head.seq, timeout_s=self._publish_timeout_s
                )
            except StreamMissing:
                sequencer.head = None
                self.epoch = await stream.ensure()  # lost with its history: a new epoch
                continue
            except JetStreamError as exc:
                if exc.err_code not in CONFLICTS:
                    raise
                sequencer.head = None  # another node published first: read the head again
                if recheck is not None:
                    found = await self._find_key(channel, *recheck)
                    if found is not None:
                        raise _AlreadyPublished(found) from None
                continue
            sequencer.head = _Head(seq, head.epoch, offset)
            return Position(head.epoch, offset)

    async def _find_key(
        self, channel: ChannelName, remembered: str, since_ms: int
    ) -> Position | None:
        """Return the position of a publication of key ``remembered`` in ``channel``
        made at ``since_ms`` or later, looking back from the head.

        A publication's ``ts`` is taken when its publish starts, not when it is stored:
        one that waited (its turn, a reconnect of the client, an election) is stored
        after newer ones. So the walk goes on past ``since_ms`` by ``KEY_SEARCH_MARGIN_MS``
        (and ends where the channel's retained history does), never stopping at the
        first older ``ts``: stopping there is how a retry once stored a key twice.
        """
        stream = self._stream_of(f"reading the history of {channel}")
        current = await self._last(channel)
        oldest_ms = since_ms - KEY_SEARCH_MARGIN_MS
        while current is not None and current.publication.ts >= oldest_ms:
            publication = current.publication
            if (
                publication.key is not None
                and dedupe_key(publication.key, publication.info) == remembered
            ):
                return publication.position
            if current.prev == 0:
                return None
            current = await stream.at(channel, current.prev)
        return None

    async def _read_head(self, channel: ChannelName, *, fresh_epoch: bool) -> _Head:
        """Return ``channel``'s head; for a channel never published to, at the stream's
        epoch (read now with ``fresh_epoch``: the stream may have been made again)."""
        last = await self._last(channel)
        if last is not None:
            return _Head(last.seq, last.publication.epoch, last.publication.offset)
        if fresh_epoch:
            self.epoch = await self._stream_of(f"publishing in {channel}").ensure()
        return _Head(0, self.epoch, 0)

    async def _last(self, channel: ChannelName) -> StoredPublication | None:
        stream = self._stream_of(f"reading the history of {channel}")
        subject = history_subject(self._prefix, channel)
        try:
            return await stream.last(channel, subject)
        except JetStreamError as exc:
            if exc.err_code != STREAM_NOT_FOUND:
                raise
            self.epoch = await stream.ensure()
            return None

    # -- history -----------------------------------------------------------------------

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``), walking back from
        the head only as far as the answer needs.

        Raises:
            BrokerError: NATS failed or is unreachable.
        """
        options = self._namespaces.options_for(channel).history
        last = await self._last(channel)
        if last is None:
            epoch, head_offset = self.epoch, 0
        else:
            epoch, head_offset = last.publication.epoch, last.publication.offset
        if since is None:
            wanted = options.size if limit is None else min(max(limit, 0), options.size)
        elif since.epoch != epoch or not 0 < head_offset - since.offset <= options.size:
            wanted = 0  # a gap, or nothing to replay: the head alone decides
        else:
            wanted = head_offset - since.offset
        now_ms = self._clock.now_ms()
        publications = await self._walk_back(channel, last, wanted, now_ms - options.ttl_ms)
        retained = _retained(publications, head_offset, options, now_ms)
        head = Position(epoch, head_offset)
        if since is None:
            return HistoryRead(head, Replay(latest(retained, limit)))
        return HistoryRead(head, decide_recovery(since, epoch, head_offset, retained, limit))

    async def _walk_back(
        self, channel: ChannelName, last: StoredPublication | None, wanted: int, oldest_ms: int
    ) -> list[Publication]:
        """Return up to ``wanted`` publications ending with ``last``, oldest first,
        stopping at one evicted or older than ``oldest_ms``."""
        found: list[Publication] = []
        current = last
        while current is not None and len(found) < wanted:
            if current.publication.ts < oldest_ms:
                break
            found.append(current.publication)
            if current.prev == 0 or len(found) == wanted:
                break
            stream = self._stream_of(f"reading the history of {channel}")
            current = await stream.at(channel, current.prev)
        found.reverse()
        return found


def _retained(
    publications: list[Publication], head_offset: int, options: HistoryOptions, now_ms: int
) -> list[Publication]:
    """Keep what the namespace retains: the last ``size`` offsets, none older than the
    ttl (as ``ChannelHistory`` does)."""
    first_kept = head_offset - options.size + 1
    oldest_ms = now_ms - options.ttl_ms
    start = 0
    while start < len(publications) and (
        publications[start].offset < first_kept or publications[start].ts < oldest_ms
    ):
        start += 1
    return publications[start:]
