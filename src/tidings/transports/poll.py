"""The polling transport ``GET /poll`` (PROTOCOL.md §5): short and long polling.

HTTP I/O through Starlette. A poll reads each channel's history after the request's
positions, merges the channels' publications by time (so a busy channel cannot starve
a quiet one), cuts at ``limit`` and answers with the cursor after the last publication
included: paging never skips or repeats.

A long poll that finds nothing new does not spin or tick: it joins the hub as a
transient subscriber of its channels (from the positions it just read, so a
publication landing in between is caught by the subscribe's own read) and sleeps on
one event that fan-out sets. Many long-pollers on one channel cost one wake-up each per
publication, and one timer each for their ``wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

from tidings.core.channel import ChannelName
from tidings.core.cursor import encode_cursor
from tidings.core.origin import is_origin_allowed
from tidings.core.permission import Credentials, check_subscribe
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Replay
from tidings.core.resume import parse_channel_list, resume_positions
from tidings.core.wire import EncodedPublication, publication_frames
from tidings.errors import RequestError, Unavailable
from tidings.hub.registry import PresenceEvent
from tidings.transports.context import TransportContext
from tidings.transports.http import (
    bearer_token,
    cors_headers,
    error_response,
    internal_error_response,
    json_response,
    preflight_response,
    query_int,
    request_error_response,
)

logger = logging.getLogger(__name__)

MAX_WAIT_S: Final = 60
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
TOKEN_COOKIE: Final = "tidings_token"


@dataclass(slots=True)
class PollAnswer:
    """What one poll returns: publications, the positions after them, and whether every
    requested position was recovered."""

    publications: list[Publication]
    positions: dict[ChannelName, Position]
    recovered: bool


class LongPollWaiter:
    """A transient hub subscriber: collects publications and wakes its poll once."""

    __slots__ = ("client_id", "publications", "user", "woken")

    def __init__(self, client_id: str, user: str) -> None:
        self.client_id = client_id
        self.user = user
        self.publications: list[Publication] = []
        self.woken = asyncio.Event()

    def deliver(self, publication: EncodedPublication) -> None:
        """Keep the publication and wake the poll (hub fan-out)."""
        self.publications.append(publication.publication)
        self.woken.set()

    def deliver_presence(self, event: PresenceEvent) -> None:
        """Pollers get no presence events."""

    def report_gap(self, channel: ChannelName) -> None:
        """Answer now: the next poll reads history and reports the gap itself."""
        self.woken.set()


class PollTransport:
    """The handler of ``/poll``, bound to one node's context."""

    def __init__(self, context: TransportContext) -> None:
        self._context = context
        self._waiters: set[LongPollWaiter] = set()

    def release_all(self) -> None:
        """Answer every waiting long poll now (the node is draining)."""
        for waiter in self._waiters:
            waiter.woken.set()

    async def handle(self, request: Request) -> Response:
        """Serve one poll."""
        context = self._context
        origin = request.headers.get("origin")
        if request.method == "OPTIONS":
            return preflight_response(origin, context.allowed_origins)
        host = request.headers.get("host")
        if not is_origin_allowed(origin, host, request.url.scheme, context.allowed_origins):
            return error_response("permission_denied", "this origin is not in allowed_origins")
        cors = cors_headers(origin, context.allowed_origins)
        try:
            response = await self._poll(request)
        except RequestError as error:
            response = request_error_response(error)
        except Exception:
            logger.exception("poll failed")
            response = internal_error_response()
        response.headers.update(cors)
        return response

    async def _poll(self, request: Request) -> Response:
        query = request.query_params
        channels = parse_channel_list(query.getlist("channel"))
        positions = resume_positions(
            channels, cursor=query.get("cursor"), since=query.getlist("since")
        )
        wait_s = query_int(query.get("wait"), "wait", 0, MAX_WAIT_S, default=0) or 0
        limit = query_int(query.get("limit"), "limit", 1, MAX_LIMIT, default=DEFAULT_LIMIT)
        assert limit is not None
        credentials = self._context.authenticator.authenticate(_token(request))
        for channel in channels:
            options = self._context.namespaces.options_for(channel)
            check_subscribe(channel, options, credentials)
        if self._context.draining:
            raise Unavailable("this node is draining; poll another")
        answer = await self._read(channels, positions, limit)
        if wait_s and positions and not answer.publications and answer.recovered:
            answer = await self._wait(answer, credentials, wait_s, limit)
        cursor = encode_cursor(answer.positions)
        etag = f'"{cursor}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if wait_s == 0 and not answer.publications and _matches(request, cursor):
            return Response(status_code=304, headers=headers)
        body = {
            "publications": publication_frames(answer.publications),
            "cursor": cursor,
            "recovered": answer.recovered,
        }
        return json_response(body, headers=headers)

    async def _read(
        self, channels: list[ChannelName], since: dict[ChannelName, Position], limit: int
    ) -> PollAnswer:
        hub = self._context.hub
        positions: dict[ChannelName, Position] = {}
        found: list[Publication] = []
        recovered = bool(since)
        for channel in channels:
            position = since.get(channel)
            read = await hub.history(channel, position, limit if position else 0)
            if position is None:
                positions[channel] = read.head  # a channel without a position starts now
                recovered = False
            elif isinstance(read.recovery, Replay):
                positions[channel] = position
                found.extend(read.recovery.publications)
            else:
                positions[channel] = read.head
                recovered = False
        return PollAnswer(_page(found, positions, channels, limit), positions, recovered)

    async def _wait(
        self, answer: PollAnswer, credentials: Credentials, wait_s: int, limit: int
    ) -> PollAnswer:
        hub = self._context.hub
        waiter = LongPollWaiter(self._context.new_client_id(), credentials.user)
        channels = list(answer.positions)
        self._waiters.add(waiter)
        subscribed: list[ChannelName] = []
        try:
            for channel in channels:
                result = await hub.subscribe(channel, waiter, answer.positions[channel])
                subscribed.append(channel)
                if result is not None and result.publications:
                    waiter.publications.extend(result.publications)
                    waiter.woken.set()
                if result is not None and not result.recovered:
                    # History moved on between the read and the subscribe (evicted or
                    # a new epoch): answer now and let the client see the gap.
                    answer.positions[channel] = result.position
                    answer.recovered = False
                    waiter.woken.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.woken.wait(), wait_s)
        finally:
            self._waiters.discard(waiter)
            for channel in subscribed:
                await hub.unsubscribe(channel, waiter)
        page = _page(waiter.publications, answer.positions, channels, limit)
        return PollAnswer(page, answer.positions, answer.recovered)


def _page(
    found: list[Publication],
    positions: dict[ChannelName, Position],
    channels: list[ChannelName],
    limit: int,
) -> list[Publication]:
    """Merge channels by time, cut at ``limit``, and advance ``positions`` past the page."""
    order = {channel: index for index, channel in enumerate(channels)}
    # Within a channel offsets increase with time; ties across channels keep request order.
    found.sort(key=lambda p: (p.ts, order[p.channel], p.offset))
    page: list[Publication] = []
    for publication in found:
        held = positions[publication.channel]
        if publication.epoch != held.epoch or publication.offset != held.offset + 1:
            continue  # not the next one of its channel (a repeat, or past a cut)
        if len(page) == limit:
            break
        page.append(publication)
        positions[publication.channel] = publication.position
    return page


def _token(request: Request) -> str | None:
    return (
        bearer_token(request.headers.get("authorization"))
        or request.query_params.get("token")
        or request.cookies.get(TOKEN_COOKIE)
    )


def _matches(request: Request, cursor: str) -> bool:
    """Whether ``If-None-Match`` names ``cursor`` (quoted or bare, weak or strong)."""
    header = request.headers.get("if-none-match")
    if header is None:
        return False
    tags = {tag.strip().removeprefix("W/").strip('"') for tag in header.split(",")}
    return cursor in tags
