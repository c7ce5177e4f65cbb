"""The polling transport ``GET /poll`` (docs/protocol.md §5): short and long polling.

A poll reads each channel's publications after the request's positions, merges the
channels' publications by time (so a busy channel cannot starve a quiet one), cuts at
``limit`` and answers with the cursor after the last publication included: paging never
skips or repeats. The answer also names each channel's position after it and whether
that channel's resume was recovered (``positions``, docs/protocol.md 1.1 §5), so clients
need not read the cursor.

Where the publications come from: a polled channel is *watched* (``watches.py``): one
hub subscription per channel keeps its head and latest publications current, so a poll
that finds nothing new, or only what the watch holds, is answered from memory; any
other position (behind what the watch keeps, another epoch, a channel not watched yet)
is read from the broker, which alone tells a gap from a lag, and the channel is
watched from then on. A long poll that finds nothing new parks on its channels'
watches: a publication wakes it, or its ``wait`` runs out, or its token expires (then
it is answered as on time-out, and the next poll, with the expired token, is refused).

I/O: two doors to the same logic. ``handle`` serves a Starlette request (any ASGI
server). ``serve_native`` takes a request from tidings' native server: if it can be
answered from the watches, or parked, it is, synchronously and with no task; otherwise
it is handed back to be served through ``handle``. Waiters with the same channels and
positions are woken by one publication into the same answer, encoded once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, Protocol
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from tidings.core.bounded_cache import BoundedCache
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.cursor import encode_cursor
from tidings.core.permission import Credentials
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Replay
from tidings.core.resume import parse_channel_list, resume_positions
from tidings.core.wire import encode_json, publication_frames
from tidings.errors import RequestError
from tidings.transports.admission import Admission
from tidings.transports.context import TransportContext
from tidings.transports.http import (
    cors_headers,
    internal_error_response,
    preflight_response,
    query_int,
    request_target,
    request_token,
)
from tidings.transports.watches import DEFAULT_MAX_WATCHES, PollWatches

logger = logging.getLogger(__name__)

MAX_WAIT_S: Final = 60
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
# The memos of the poll path are bounded in bytes (``core.bounded_cache``): parsed
# queries, encoded answers, and the replies the native door shares between the long
# polls one publication wakes. Only small entries are kept: a large answer (a page of
# big publications) is made again rather than kept, so no client can fill the memory
# with answers, whatever it asks for, nor with junk in its query strings.
PARSE_CACHE_BYTES: Final = 2 * 1024 * 1024
ANSWER_CACHE_BYTES: Final = 4 * 1024 * 1024
REPLY_CACHE_BYTES: Final = 4 * 1024 * 1024
MAX_CACHED_ENTRY_BYTES: Final = 256 * 1024
# What a parsed query holds per channel beyond its name (a position, dict slots).
_PARSED_BYTES_PER_CHANNEL: Final = 256
_ANSWER_BYTES_PER_ITEM: Final = 128

PollKind = Literal["short", "long"]


class PollCounters(Protocol):
    """Where polls are counted (the node's metrics)."""

    def poll_started(self) -> None:
        """A poll is in flight."""
        ...

    def poll_ended(self, kind: PollKind) -> None:
        """A poll of ``kind`` was answered (or its client left)."""
        ...


class NativePoll(Protocol):
    """One ``GET /poll`` as the native server hands it over."""

    @property
    def query_string(self) -> bytes:
        """The request's raw query string."""
        ...

    def header(self, name: bytes) -> bytes | None:
        """The first value of request header ``name`` (lower case), if present."""
        ...

    def respond(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Write the response (``content-length`` and ``date`` are added)."""
        ...

    def fall_back(self) -> None:
        """Serve the request through the ASGI app instead (the broker must be read)."""
        ...

    def on_client_gone(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` if the client goes away before the response is written."""
        ...


@dataclass(frozen=True, slots=True)
class PollQuery:
    """A parsed poll: what to read, from where, how long to wait, and who asks."""

    channels: tuple[ChannelName, ...]
    positions: Mapping[ChannelName, Position]
    wait_s: int
    limit: int
    token: str | None
    if_none_match: str | None

    @property
    def kind(self) -> PollKind:
        """``short`` for ``wait=0``, else ``long``."""
        return "long" if self.wait_s else "short"


@dataclass(slots=True)
class PollAnswer:
    """What one poll returns: publications, the positions after them, and which
    channels' requested positions were recovered (a channel asked without a position
    is not)."""

    publications: list[Publication]
    positions: dict[ChannelName, Position]
    recovered_channels: frozenset[ChannelName]

    @property
    def recovered(self) -> bool:
        """The answer's top-level flag (docs/protocol.md §5): every channel was recovered."""
        return len(self.recovered_channels) == len(self.positions)


def parse_poll_query(
    query_string: str, header: Callable[[str], str | None], *, cookies: bool = True
) -> PollQuery:
    """Parse a poll's query string and headers (the ``Cookie`` header only if
    ``cookies``: see ``OriginAccess.accepts_cookies``).

    The same poll comes back again and again (a short poller with nothing new, every
    long poller woken by the same publication), so parses are kept: a ``PollQuery`` is
    immutable, and a parse is a pure function of these four strings.

    Raises:
        BadRequest: an invalid channel list, cursor, position, ``wait`` or ``limit``.
    """
    cookie = header("cookie") if cookies else None
    key = (query_string, header("authorization"), cookie, header("if-none-match"))
    query = _PARSED.get(key)
    if query is None:
        query = _parse(*key)
        # Counted in bytes: junk parameters make a key longer, so it costs more and is
        # evicted sooner (or not kept at all), never more memory.
        cost = sum(len(part) for part in key if part is not None)
        _PARSED.put(key, query, cost + _PARSED_BYTES_PER_CHANNEL * len(query.channels))
    return query


_PARSED: Final[BoundedCache[tuple[str, str | None, str | None, str | None], PollQuery]] = (
    BoundedCache(PARSE_CACHE_BYTES, MAX_CACHED_ENTRY_BYTES)
)


def _parse(
    query_string: str, authorization: str | None, cookie: str | None, if_none_match: str | None
) -> PollQuery:
    pairs = parse_qsl(query_string, keep_blank_values=True)
    last = dict(pairs)  # a repeated single-valued parameter: the last one counts
    channels = parse_channel_list([value for name, value in pairs if name == "channel"])
    positions = resume_positions(
        channels,
        cursor=last.get("cursor"),
        since=[value for name, value in pairs if name == "since"],
    )
    wait_s = query_int(last.get("wait"), "wait", 0, MAX_WAIT_S, default=0) or 0
    limit = query_int(last.get("limit"), "limit", 1, MAX_LIMIT, default=DEFAULT_LIMIT)
    assert limit is not None
    token = request_token(authorization, last.get("token"), cookie)
    return PollQuery(
        tuple(channels), MappingProxyType(positions), wait_s, limit, token, if_none_match
    )


class PollTransport:
    """The handler of ``/poll``, bound to one node's context."""

    def __init__(
        self,
        context: TransportContext,
        counters: PollCounters,
        *,
        max_watches: int = DEFAULT_MAX_WATCHES,
    ) -> None:
        """Serve polls in ``context``, watching at most ``max_watches`` channels."""
        self._context = context
        self._admission = Admission(context)
        self._counters = counters
        self.watches = PollWatches(context.hub, context.new_client_id, max_watches)
        self._answers: BoundedCache[tuple[object, ...], tuple[str, bytes]] = BoundedCache(
            ANSWER_CACHE_BYTES, MAX_CACHED_ENTRY_BYTES
        )
        self._replies: BoundedCache[
            tuple[int, str | None],
            tuple[PollQuery, tuple[Position, ...], tuple[int, dict[str, str], bytes]],
        ] = BoundedCache(REPLY_CACHE_BYTES, MAX_CACHED_ENTRY_BYTES)

    def release_all(self) -> None:
        """Answer every waiting long poll now (the node is draining)."""
        self.watches.release_all()

    async def close(self) -> None:
        """Let go of every watch (the node stops)."""
        await self.watches.close()

    # -- the ASGI door ---------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        """Serve one poll."""
        context = self._context
        origin = request.headers.get("origin")
        if request.method == "OPTIONS":
            return preflight_response(origin, context.allowed_origins)
        admission = self._admission
        try:
            access = admission.check_origin(origin, request.headers.get("host"), request.url.scheme)
        except RequestError as error:
            return self._refusal(request, error)  # no CORS headers: the page may not read it
        cors = cors_headers(origin, context.allowed_origins)
        kind: PollKind = "short"
        self._counters.poll_started()
        try:
            query = parse_poll_query(
                request.scope["query_string"].decode("latin-1"),
                request.headers.get,
                cookies=access.accepts_cookies,
            )
            kind = query.kind
            credentials = await admission.admit_request("poll", query.channels, query.token)
            status, headers, body = await self._poll(query, credentials)
            response = Response(body, status, headers, media_type="application/json")
        except RequestError as error:
            response = self._refusal(request, error)
        except Exception:
            logger.exception("poll failed")
            response = internal_error_response()
        finally:
            self._counters.poll_ended(kind)
        response.headers.update(cors)
        if response.status_code == 304:
            del response.headers["content-type"]
        return response

    def _refusal(self, request: Request, error: RequestError) -> Response:
        """The answer to a poll refused (or failed) with ``error``, logged once here: the
        native door hands its refusals to this door rather than answer them itself."""
        status, headers, body = self._admission.http_refusal(
            error, request.scope.get("client"), request_target(request.scope)
        )
        return Response(body, status, headers)

    async def _poll(
        self, query: PollQuery, credentials: Credentials
    ) -> tuple[int, dict[str, str], bytes]:
        answer = self._answer_now(query)
        if answer is None:
            answer = await self._read(query)
        if query.wait_s and query.positions and not answer.publications and answer.recovered:
            answer = await self._wait(query, answer, _held_s(query, credentials))
        return self._respond(query, answer)

    async def _wait(self, query: PollQuery, answer: PollAnswer, held_s: float) -> PollAnswer:
        # A publication may have landed between the broker read and the watch's start:
        # the watch holds it, so look again before parking.
        again = self._answer_now(query)
        if again is None or again.publications or not again.recovered:
            return again or answer
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not woken.done():
                woken.set_result(None)

        parked = self.watches.park(query.channels, held_s, wake)
        try:
            await woken
        finally:
            parked.cancel()
        return self._answer_now(query) or await self._read(query)

    # -- the native door ---------------------------------------------------------------

    def serve_native(self, poll: NativePoll) -> None:
        """Answer or park ``poll`` now if the watches allow it, else ``fall_back``."""
        admission = self._admission
        origin = _text(poll.header(b"origin"))
        try:
            access = admission.check_origin(origin, _text(poll.header(b"host")), "http")
            query = parse_poll_query(
                poll.query_string.decode("latin-1"),
                lambda name: _text(poll.header(name.encode())),
                cookies=access.accepts_cookies,
            )
            # Admitted as the ASGI door admits, but without waiting for a signing key.
            credentials = admission.admit_request_now("poll", query.channels, query.token)
        except RequestError:
            # The ASGI door answers with the error (and logs it), once, there; a token
            # whose key is not fetched yet is admitted there after the fetch.
            poll.fall_back()
            return
        heads = self._heads(query)
        if heads is None:
            poll.fall_back()  # a channel not watched yet: the broker is read first
            return
        if query.wait_s and _at_heads(query, heads):
            self._counters.poll_started()
            self._park_native(poll, query, origin, _held_s(query, credentials))
        elif not self._reply_native(poll, query, origin, heads, started=False):
            poll.fall_back()  # a position the watches do not hold: the broker is read

    def _park_native(
        self, poll: NativePoll, query: PollQuery, origin: str | None, held_s: float
    ) -> None:
        def wake() -> None:
            heads = self._heads(query)
            if heads is None or not self._reply_native(poll, query, origin, heads, started=True):
                # A watch was dropped (a gap), or moved past what it keeps: the broker
                # must say. (The ASGI door counts the poll again.)
                self._counters.poll_ended("long")
                poll.fall_back()

        parked = self.watches.park(query.channels, held_s, wake)

        def client_gone() -> None:
            parked.cancel()
            self._counters.poll_ended("long")

        poll.on_client_gone(client_gone)

    def _reply_native(
        self,
        poll: NativePoll,
        query: PollQuery,
        origin: str | None,
        heads: tuple[Position, ...],
        *,
        started: bool,
    ) -> bool:
        """Write the answer the watches give, if they hold it; return whether written.

        Polls asking the same thing of the same heads (the long pollers one publication
        woke) share one reply, made once.
        """
        key = (id(query), origin)
        entry = self._replies.get(key)
        if entry is not None and entry[0] is query and entry[1] == heads:
            reply = entry[2]
        else:
            answer = self._answer_now(query)
            if answer is None:
                return False
            status, headers, body = self._respond(query, answer)
            headers = {**headers, **cors_headers(origin, self._context.allowed_origins)}
            if status != 304:
                headers["content-type"] = "application/json"
            reply = (status, headers, body)
            # The query is kept in the entry, so its id cannot be reused while it is.
            self._replies.put(
                key, (query, heads, reply), len(body) + _ANSWER_BYTES_PER_ITEM * len(heads)
            )
        if not started:
            self._counters.poll_started()
        self._counters.poll_ended(query.kind)
        poll.respond(*reply)
        return True

    def _heads(self, query: PollQuery) -> tuple[Position, ...] | None:
        """The heads of the query's channels as the watches know them, or ``None`` if
        any is not watched."""
        heads = []
        for channel in query.channels:
            view = self.watches.view(channel)
            if view is None:
                return None
            heads.append(view.head)
        return tuple(heads)

    # -- the logic both doors share -------------------------------------------------------

    def _answer_now(self, query: PollQuery) -> PollAnswer | None:
        """Answer from the watches alone, or ``None`` if any channel needs the broker."""
        positions: dict[ChannelName, Position] = {}
        found: list[Publication] = []
        recovered: list[ChannelName] = []
        for channel in query.channels:
            view = self.watches.view(channel)
            if view is None:
                return None
            position = query.positions.get(channel)
            if position is None:
                positions[channel] = view.head  # a channel without a position starts now
                continue
            replay = view.since(position, query.limit)
            if replay is None:
                return None
            positions[channel] = position
            recovered.append(channel)
            found.extend(replay.publications)
        return PollAnswer(
            _page(found, positions, query.channels, query.limit), positions, frozenset(recovered)
        )

    async def _read(self, query: PollQuery) -> PollAnswer:
        """Read every channel from the broker, and watch each from then on."""
        hub = self._context.hub
        positions: dict[ChannelName, Position] = {}
        found: list[Publication] = []
        recovered: list[ChannelName] = []
        for channel in query.channels:
            position = query.positions.get(channel)
            read = await hub.history(channel, position, query.limit if position else 0)
            if position is None:
                positions[channel] = read.head  # a channel without a position starts now
            elif isinstance(read.recovery, Replay):
                positions[channel] = position
                recovered.append(channel)
                found.extend(read.recovery.publications)
            else:
                positions[channel] = read.head
        page = _page(found, positions, query.channels, query.limit)
        for channel in query.channels:
            await self.watches.ensure(channel, positions[channel])
        return PollAnswer(page, positions, frozenset(recovered))

    def _respond(self, query: PollQuery, answer: PollAnswer) -> tuple[int, dict[str, str], bytes]:
        """Return the status, headers and body of ``answer``; an unchanged short poll
        that names the current cursor in ``If-None-Match`` gets ``304``."""
        key = (
            query.channels,
            tuple(answer.positions.values()),
            tuple(p.position for p in answer.publications),
            answer.recovered_channels,
        )
        memo = self._answers.get(key)
        if memo is None:
            memo = _encode_answer(answer)
            items = len(answer.positions) + len(answer.publications)
            self._answers.put(key, memo, len(memo[1]) + _ANSWER_BYTES_PER_ITEM * items)
        cursor, body = memo
        headers = {"etag": f'"{cursor}"', "cache-control": "no-cache"}
        if not query.wait_s and not answer.publications and _matches(query.if_none_match, cursor):
            return 304, headers, b""
        return 200, headers, body


def _held_s(query: PollQuery, credentials: Credentials) -> float:
    """How long a long poll may be held: its ``wait``, cut at its token's expiry."""
    if credentials.expires is None:
        return query.wait_s
    return max(0.0, min(query.wait_s, credentials.expires - time.time()))


def _encode_answer(answer: PollAnswer) -> tuple[str, bytes]:
    """Return the cursor and the JSON body of ``answer`` (docs/protocol.md §5)."""
    cursor = encode_cursor(answer.positions)
    recovered = answer.recovered_channels
    body = encode_json(
        {
            "publications": publication_frames(answer.publications),
            "cursor": cursor,
            "recovered": answer.recovered,
            # 1.1: where the answer leaves each channel, and whether its resume was
            # recovered, so a client never needs to read the cursor.
            "positions": {
                channel: {
                    "epoch": position.epoch,
                    "offset": position.offset,
                    "recovered": channel in recovered,
                }
                for channel, position in answer.positions.items()
            },
        }
    )
    return cursor, body


def _at_heads(query: PollQuery, heads: tuple[Position, ...]) -> bool:
    """Whether every channel of ``query`` has a position, at its head: nothing is new."""
    positions = query.positions
    if len(positions) != len(heads):
        return False
    for channel, head in zip(query.channels, heads, strict=True):
        position = positions.get(channel)
        # Fields, not ==: this runs for every long poll, and == builds two tuples.
        if position is None or position.offset != head.offset or position.epoch != head.epoch:
            return False
    return True


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _page(
    found: list[Publication],
    positions: dict[ChannelName, Position],
    channels: Sequence[ChannelName],
    limit: int,
) -> list[Publication]:
    """Merge channels by time, cut at ``limit``, and advance ``positions`` past the page."""
    if not found:
        return []
    order = {channel: index for index, channel in enumerate(channels)}
    # Within a channel offsets increase with time; ties across channels keep request order.
    found.sort(key=lambda p: (p.ts, order[p.channel], p.offset))
    page: list[Publication] = []
    for publication in found:
        held = positions[publication.channel]
        if decide_catch_up(held, publication.position) is not CatchUp.DELIVER:
            continue  # not the next one of its channel (a repeat, or past a cut)
        if len(page) == limit:
            break
        page.append(publication)
        positions[publication.channel] = publication.position
    return page


def _matches(header: str | None, cursor: str) -> bool:
    """Whether ``If-None-Match`` names ``cursor`` (quoted or bare, weak or strong)."""
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")}
    return cursor in tags
