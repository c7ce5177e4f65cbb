"""The relay broker: a node that takes its publications from an upstream tidings node
(another node, or another relay) instead of sequencing them (docs/protocol.md §10,
docs/brokers/relay.md). I/O: a link to the upstream (WebSocket, or SSE where only plain
HTTP passes) and the upstream's server API over HTTP.

Theory of operation
-------------------
*Following.* The hub subscribes a channel at its broker on its first local subscriber
and unsubscribes it on its last; the relay follows the channel upstream exactly that
long, once, however many clients it serves. ``subscribe`` returns once the upstream
has answered with the channel's head: from then on every publication after it reaches
the hub (the link's order), and every one before it is the upstream's history.

*Positions are the upstream's.* A publication is passed on with its epoch, offset,
``ts``, ``key`` and ``info`` unchanged; a relay sequences nothing. So a client can move
between relays and the origin and resume with the same position.

*The cache.* Each followed channel keeps the publications it received, bounded as the
namespace's history (``history_size``, ``history_ttl``), and its head. ``history`` is
answered from the cache when the cache can answer (a ``Replay``). The first time it
cannot, the cache is filled once from the upstream's ``/api/history`` (every reader
waiting on that one read: a relay's clients returning together cost the upstream one
read per channel, not one each) and is then *complete*: it holds all the upstream
retains. What it still cannot answer (a position older than the upstream retains, an
unfollowed channel) is asked of the upstream, which answers as the origin would. So a
client hears ``recovered: false`` only when the upstream could not recover it either.

*Judging what arrives* (``core.catchup``): the next offset is cached and handed on; one
already had (a resubscribe's overlap) is dropped; a hole or another epoch means the
upstream lost publications it could not recover (it said ``recovered: false``, or
restarted): the cache starts again from that publication, which is handed on, and the
hub, seeing it does not follow, tells its subscribers to resume (they then hear
``recovered: false`` from the upstream's answer, through ``history``).

*Link lost, upstream could not recover.* A resubscribe answered ``recovered: false``
restarts the cache at the upstream's head and tells the hub at once (``listen_gaps``,
the ``ReportsGaps`` role): the channel's clients are closed with 4504 now and resume,
hearing ``recovered: false``, without waiting for the channel's next publication.

*Link lost.* The link reconnects with backoff and resubscribes each channel from the
cache's head: the upstream replays what the relay missed (nothing lost, nothing
repeated), or says it cannot, which is the case above. Meanwhile the relay serves from
its cache; ``is_ready`` is false, and a new channel cannot be followed (``unavailable``).

*Publishing* at a relay is forwarded to the upstream's ``POST /api/publish`` with the
relay's ``api_key`` (relay_api.py), chosen over a client ``publish`` on the link: the
API needs no ``client_publish`` in the namespace, and it takes the publishing client's
``info`` with the key (docs/protocol.md §6), so the upstream dedupes the key in that
user's space exactly as if the client had published there, and says ``duplicate``.
The publication comes back through the link like any other.

Presence and node commands are this node's own (a relay's presence lists its clients).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from tidings.brokers.base import GapHandler, HistoryRead, PublicationHandler, PublishResult
from tidings.brokers.memory import LocalNode, LocalNodeControl, LocalPresence
from tidings.brokers.relay_api import UpstreamApi, UpstreamCalls
from tidings.brokers.relay_link import UpstreamLink, WebSocketLink
from tidings.brokers.relay_sse import SseLink
from tidings.clock import Clock, SystemClock
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions
from tidings.core.history import ChannelHistory, HistoryOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay
from tidings.errors import (
    BrokerError,
    BrokerUnavailable,
    ConfigError,
    RequestError,
    TidingsError,
)

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S: Final = 5.0
SUBSCRIBE_TIMEOUT_S: Final = 10.0
# How long a starting relay waits for its link (its clients get ``unavailable`` before).
START_CONNECT_TIMEOUT_S: Final = 2.0
# scheme -> (the link's scheme, the API's scheme, whether the link is a WebSocket)
SCHEMES: Final = {
    "relay+ws": ("ws", "http", True),
    "relay+wss": ("wss", "https", True),
    "relay+http": ("http", "http", False),
    "relay+https": ("https", "https", False),
}
# The settings of ``[brokers.relay]``.
FILE_SETTINGS: Final = ("token", "token_file", "api_key")


@dataclass(frozen=True, slots=True)
class RelayTarget:
    """Where the upstream is: its base URL (for the API and ``/sse``), the link's URL,
    and the relay's credentials there: a token, or a file holding one (read again at
    each connection, so a token renewed in the file is used once the old one expires)."""

    base_url: str
    link_url: str
    websocket: bool
    token: str | None
    api_key: str | None
    token_file: str | None = None

    def current_token(self) -> str | None:
        """The token to present now: ``token``, or what ``token_file`` holds now
        (``None``, with a warning, when it cannot be read)."""
        if self.token_file is None:
            return self.token
        try:
            with open(self.token_file, encoding="utf-8") as file:
                return file.read().strip() or None
        except OSError as exc:
            logger.warning("the relay's token_file cannot be read: %s", exc)
            return None

    @classmethod
    def parse(cls, url: str, options: Mapping[str, object] | None = None) -> RelayTarget:
        """Read a ``relay+ws://``, ``relay+wss://``, ``relay+http://`` or
        ``relay+https://`` URL (with any path the upstream is mounted under) and the
        ``[brokers.relay]`` table (``token`` or ``token_file``, ``api_key``).

        Raises:
            ConfigError: another scheme, no host, a query (credentials belong in the
                table, not in a URL that ends up in logs), or a bad table.
        """
        parts = urlsplit(url)
        schemes = SCHEMES.get(parts.scheme.lower())
        if schemes is None or not parts.hostname:
            raise ConfigError(
                f"relay broker URL {url!r} must be relay+ws://host:port or relay+http://host:port"
            )
        if parts.query or parts.username or parts.password:
            raise ConfigError(
                "a relay broker URL takes no query and no credentials: "
                "put token and api_key in [brokers.relay]"
            )
        link_scheme, api_scheme, websocket = schemes
        path = parts.path.rstrip("/")
        base_url = urlunsplit((api_scheme, parts.netloc, path, "", ""))
        link_url = (
            urlunsplit((link_scheme, parts.netloc, f"{path}/ws", "", "")) if websocket else base_url
        )
        token, token_file, api_key = _file_settings(options or {})
        if token is not None and token_file is not None:
            raise ConfigError("brokers.relay: give token or token_file, not both")
        return cls(base_url, link_url, websocket, token, api_key, token_file)


def _file_settings(options: Mapping[str, object]) -> list[str | None]:
    for name in options:
        if name not in FILE_SETTINGS:
            raise ConfigError(
                f"brokers.relay: unknown setting {name!r}; known: {list(FILE_SETTINGS)}"
            )
    values: list[str | None] = []
    for name in FILE_SETTINGS:
        value = options.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"brokers.relay.{name} must be a non-empty string")
        values.append(value)
    return values


class _Followed:
    """One channel followed upstream: its head, its cache, whether it is synced, and
    whether the cache is *complete*: it holds every publication the upstream retained
    (so a read of the latest ones is the upstream's answer too)."""

    __slots__ = ("backfill", "cache", "complete", "head", "refusal", "synced")

    def __init__(self, options: HistoryOptions) -> None:
        self.cache = ChannelHistory(options)
        self.head: Position | None = None  # None until the upstream's first answer
        self.synced = asyncio.Event()
        self.refusal: RequestError | None = None
        self.complete = False
        self.backfill: asyncio.Task[None] | None = None  # the one read that fills the cache

    def restart(self, head: Position, options: HistoryOptions) -> None:
        """Start the cache again, empty, at ``head`` (complete when nothing precedes it)."""
        self.head = head
        self.cache = ChannelHistory(options)
        self.complete = head.offset == 0
        self.backfill = None


class RelayBroker(LocalNode):
    """A broker whose truth is an upstream tidings node; see the module docstring.
    Presence and node commands are this node's own (``LocalNode``)."""

    def __init__(
        self,
        url: str,
        namespaces: Namespaces,
        *,
        dedupe: DedupeOptions | None = None,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        node_id: str | None = None,
        options: Mapping[str, object] | None = None,
        clock: Clock | None = None,
        subscribe_timeout_s: float = SUBSCRIBE_TIMEOUT_S,
        link: UpstreamLink | None = None,
        api: UpstreamCalls | None = None,
    ) -> None:
        """Prepare a relay of the upstream at ``url``; nothing connects before ``start``.

        ``options`` is the ``[brokers.relay]`` table: ``token`` (a connection token of
        the upstream whose channels allow what this relay serves) and ``api_key`` (the
        upstream's, for publishing and for history the cache cannot answer).
        ``dedupe`` and ``node_id`` are the upstream's business and unused here.
        ``link`` and ``api`` replace the link and the API client the URL names (tests
        give fakes).

        Raises:
            ConfigError: the URL or ``options`` is not one this broker reads.
        """
        del dedupe, node_id  # the upstream dedupes; a relay has no peers to name itself to
        self.target = RelayTarget.parse(url, options)
        self._namespaces = namespaces
        self._clock = clock or SystemClock()
        self._publish_timeout_s = publish_timeout_s
        self._subscribe_timeout_s = subscribe_timeout_s
        self._followed: dict[ChannelName, _Followed] = {}
        self._on_publication: PublicationHandler | None = None
        self._on_gap: GapHandler | None = None
        self._presence = LocalPresence()
        self._control = LocalNodeControl()
        self._given_link = link
        self._given_api = api
        self._link: UpstreamLink | None = None
        self._api: UpstreamCalls | None = None

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self, on_publication: PublicationHandler) -> None:
        """Start the link to the upstream and wait (at most ``START_CONNECT_TIMEOUT_S``)
        for it to connect; a relay whose upstream is down starts anyway, not ready."""
        target = self.target
        self._on_publication = on_publication
        self._api = self._given_api or UpstreamApi(
            target.base_url, target.api_key, self._publish_timeout_s
        )
        if self._given_link is not None:
            self._link = self._given_link
        elif target.websocket:
            self._link = WebSocketLink(target.link_url, target.current_token)
        else:
            self._link = SseLink(target.base_url, target.current_token)
        self._link.start(self)
        logger.info("relaying %s", target.base_url)
        try:
            async with asyncio.timeout(START_CONNECT_TIMEOUT_S):
                await self._link.wait_connected()
        except TimeoutError:
            logger.warning("upstream %s unreachable; the relay is not ready", target.base_url)

    async def close(self) -> None:
        """Close the link and the API client; idempotent."""
        link, self._link = self._link, None
        api, self._api = self._api, None
        if link is not None:
            await link.close()
        if api is not None:
            await api.aclose()

    async def is_ready(self) -> bool:
        """Whether the link is up and the upstream answers ``/ready`` in time."""
        link, api = self._link, self._api
        if link is None or api is None or not link.is_connected:
            return False
        return await api.is_ready()

    # -- publish and history ----------------------------------------------------------------

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Forward the publication to the upstream's server API, with its key and the
        publishing client's ``info``.

        Raises:
            RequestError: the upstream refused the publication itself (too large...).
            BrokerUnavailable: the upstream could not be reached; nothing was published.
            BrokerError: the upstream did not answer in time, or refused the relay's
                credentials.
        """
        return await self._started_api().publish(channel, data, key, info)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Answer from the cache when it can, else from the upstream's history. The first
        miss of a followed channel fills its cache from the upstream (once, however many
        readers wait for it: a relay's clients returning together cost one read)."""
        followed = self._followed.get(channel)
        if followed is not None and followed.head is not None:
            cached = self._from_cache(followed, since, limit)
            if cached is not None:
                return cached
            if not followed.complete:
                if followed.backfill is None:
                    followed.backfill = asyncio.create_task(self._backfill(channel, followed))
                with contextlib.suppress(TidingsError):  # then the read below says why
                    await asyncio.shield(followed.backfill)
                if self._followed.get(channel) is followed:  # still followed
                    cached = self._from_cache(followed, since, limit)
                    if cached is not None:
                        return cached
        return await self._started_api().history(channel, since, limit)

    def _from_cache(
        self, followed: _Followed, since: Position | None, limit: int | None
    ) -> HistoryRead | None:
        head = followed.head
        if head is None:
            return None
        now_ms = self._clock.now_ms()
        if since is not None:
            recovery = followed.cache.since(since, head.epoch, head.offset, now_ms, limit)
            return HistoryRead(head, recovery) if isinstance(recovery, Replay) else None
        publications = followed.cache.latest(now_ms, limit)
        # Everything the upstream retains, or the whole page asked for.
        if followed.complete or (limit is not None and len(publications) >= limit):
            return HistoryRead(head, Replay(publications))
        return None

    async def _backfill(self, channel: ChannelName, followed: _Followed) -> None:
        """Fill ``followed``'s cache with what the upstream retains before it."""
        try:
            read = await self._started_api().history(channel, None, None)
        except BaseException:
            followed.backfill = None  # a later miss tries again
            raise
        head = followed.head
        if head is None or read.head.epoch != head.epoch or followed.backfill is None:
            return  # the channel moved on meanwhile (another epoch, a restart)
        assert isinstance(read.recovery, Replay)  # a read without a position
        upstream = read.recovery.publications
        by_offset = {p.offset: p for p in upstream}
        now_ms = self._clock.now_ms()
        by_offset.update((p.offset, p) for p in followed.cache.latest(now_ms, None))
        run = []
        offset = head.offset
        while offset in by_offset:  # the consecutive run ending at the head
            run.append(by_offset[offset])
            offset -= 1
        cache = ChannelHistory(self._history_options(channel))
        for publication in reversed(run):
            cache.retain(publication, now_ms)
        followed.cache = cache
        # Complete when the run reaches back to the upstream's oldest retained one.
        followed.complete = not upstream or offset + 1 <= upstream[0].offset

    def _started_api(self) -> UpstreamCalls:
        if self._api is None:
            raise BrokerUnavailable("the relay broker is not started")
        return self._api

    # -- following channels -------------------------------------------------------------------

    async def subscribe(self, channel: ChannelName) -> None:
        """Follow ``channel`` upstream; return once the upstream answered with its head.

        Raises:
            BrokerUnavailable: the upstream is unreachable or did not answer in time.
            BrokerError: the upstream refused the channel (the relay's token).
        """
        if channel in self._followed:
            return
        link = self._link
        if link is None or not link.is_connected:
            raise BrokerUnavailable(f"upstream {self.target.base_url} unreachable")
        followed = self._followed[channel] = _Followed(self._history_options(channel))
        await link.follow(channel)
        try:
            async with asyncio.timeout(self._subscribe_timeout_s):
                await followed.synced.wait()
        except TimeoutError:
            await self.unsubscribe(channel)
            raise BrokerUnavailable(f"upstream did not answer the subscribe of {channel}") from None
        if followed.refusal is not None:
            await self.unsubscribe(channel)
            raise BrokerError(f"upstream refused {channel}: {followed.refusal.message}")

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop following ``channel`` and drop its cache; idempotent. Publications the
        upstream sent before it confirmed are still handed on (made while subscribed)."""
        followed = self._followed.get(channel)
        if followed is None:
            return
        try:
            if self._link is not None:
                await self._link.unfollow(channel)
        finally:
            if self._followed.get(channel) is followed:
                del self._followed[channel]

    def _history_options(self, channel: ChannelName) -> HistoryOptions:
        return self._namespaces.options_for(channel).history

    def listen_gaps(self, on_gap: GapHandler) -> None:
        """Call ``on_gap(channel)`` when the upstream answers a resume of ``channel`` with
        ``recovered: false`` (``ReportsGaps``): its local subscribers resume at once."""
        self._on_gap = on_gap

    # -- what the link reports (UpstreamListener) ---------------------------------------------

    def position_of(self, channel: ChannelName) -> Position | None:
        """The cache's head: where the link resumes ``channel`` from."""
        followed = self._followed.get(channel)
        return None if followed is None else followed.head

    def receive_subscribed(
        self,
        channel: ChannelName,
        head: Position,
        recovered: bool,
        publications: tuple[Publication, ...],
    ) -> None:
        """Take the upstream's answer to a (re)subscribe."""
        followed = self._followed.get(channel)
        if followed is None:
            return
        lost = followed.head is not None and not recovered
        if followed.head is None or not recovered:
            if followed.head is not None:
                logger.warning(
                    "upstream could not recover %s after %s:%d; it continues at %s:%d",
                    channel,
                    followed.head.epoch,
                    followed.head.offset,
                    head.epoch,
                    head.offset,
                )
            followed.restart(head, self._history_options(channel))
            if lost and self._on_gap is not None:
                # Publications the hub's subscribers had not had are gone: they resume
                # now and hear recovered: false (the cache no longer answers their
                # position), rather than at the channel's next publication.
                try:
                    self._on_gap(channel)
                except Exception:
                    logger.exception("the gap handler failed on %s", channel)
        for publication in publications:
            self._receive(followed, publication)
        followed.synced.set()

    def receive_publication(self, publication: Publication) -> None:
        """Take a live publication of a followed channel."""
        followed = self._followed.get(publication.channel)
        if followed is not None and followed.head is not None:
            self._receive(followed, publication)

    def receive_refusal(self, channel: ChannelName, error: RequestError) -> None:
        """Note that the upstream refused ``channel``."""
        followed = self._followed.get(channel)
        logger.warning("upstream refused to relay %s: %s", channel, error.message)
        if followed is not None:
            followed.refusal = error
            followed.synced.set()

    def _receive(self, followed: _Followed, publication: Publication) -> None:
        outcome = decide_catch_up(followed.head, publication.position)
        if outcome is CatchUp.ALREADY_HAD:
            return
        if outcome is not CatchUp.DELIVER:
            # The upstream lost what came between: start again from here (module docstring).
            before = Position(publication.epoch, publication.offset - 1)
            followed.restart(before, self._history_options(publication.channel))
        followed.cache.retain(publication, self._clock.now_ms())
        followed.head = publication.position
        assert self._on_publication is not None
        try:
            self._on_publication(publication)
        except Exception:
            logger.exception("the publication handler failed on %s", publication.channel)
