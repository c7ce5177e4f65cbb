"""The client's side of owner routing (docs/protocol.md §9): which node serves which of a
subscription's channels, and how a redirect of the server splits them.

Bookkeeping is pure; ``owners_after_redirect`` asks ``GET /route`` over httpx.

A subscription starts with every channel in one ``ChannelGroup`` at the URL it was
given. A node that does not serve some channels says so: a WebSocket ``subscribe`` is
answered ``moved`` with the owner's URL (the channel is named), an SSE stream or a poll
is answered ``307`` to the same request on the owner of one of its channels (not
saying which), and a connection whose own key moved gets ``disconnect`` 4503 with the
owner's URL (all of its channels go). The channels that move leave their group, with
their positions (``PositionTracker.part``), for a group of their own at the owner, with
connections of its own; the rest stay. No channel is redirected more than
``MAX_REDIRECTS`` times in a row without a node serving it (nodes that disagree about
an owner would otherwise send it back and forth for ever): past that the subscription
stops with ``TooManyRedirects``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import httpx
import msgspec

from tidings.client.errors import TooManyRedirects
from tidings.client.frames import decode
from tidings.client.http import node_base, request_error
from tidings.client.positions import PositionTracker
from tidings.core.channel import ChannelName
from tidings.errors import TidingsError

logger = logging.getLogger(__name__)

MAX_REDIRECTS: Final = 5


@dataclass(slots=True)
class ChannelGroup:
    """Channels served by one node (``url``, a base URL), with their positions."""

    url: str
    tracker: PositionTracker


class RouteAnswer(msgspec.Struct, frozen=True):
    """``GET /route``: the owner's base URL."""

    url: str


class Redirects:
    """Counts each channel's redirects since a node last served it; see the module
    docstring."""

    __slots__ = ("_counts", "limit")

    def __init__(self, limit: int = MAX_REDIRECTS) -> None:
        self.limit = limit
        self._counts: dict[ChannelName, int] = {}

    def receive_served(self, channels: Sequence[ChannelName]) -> None:
        """A node subscribed ``channels``: their counts start again."""
        for channel in channels:
            self._counts.pop(channel, None)

    def receive_moved(self, channel: ChannelName, url: str) -> None:
        """``channel`` was sent to ``url``.

        Raises:
            TooManyRedirects: this is more than ``limit`` redirects in a row.
        """
        count = self._counts.get(channel, 0) + 1
        if count > self.limit:
            raise TooManyRedirects(channel, self.limit, url)
        self._counts[channel] = count


def split_group(
    group: ChannelGroup, moves: Mapping[ChannelName, str]
) -> tuple[ChannelGroup | None, list[ChannelGroup]]:
    """Return what stays of ``group`` (``None`` if nothing) and one new group per owner
    URL of the channels ``moves`` sends elsewhere (channels not in the group ignored)."""
    channels = group.tracker.channels
    by_url: dict[str, list[ChannelName]] = {}
    for channel in channels:
        if channel in moves:
            by_url.setdefault(moves[channel], []).append(channel)
    moved = [ChannelGroup(url, group.tracker.part(part)) for url, part in by_url.items()]
    staying = [channel for channel in channels if channel not in moves]
    kept = ChannelGroup(group.url, group.tracker.part(staying)) if staying else None
    return kept, moved


async def owners_after_redirect(
    http: httpx.AsyncClient, group: ChannelGroup, location: str
) -> dict[ChannelName, str]:
    """Return where the channels of ``group`` go after a ``307`` to ``location`` (a base URL).

    A group of one channel goes there. A group of several asks the node that redirected
    (its ``GET /route?channel=``, docs/protocol.md §9) for each channel's owner: those
    it serves stay, the others go to their owners; if it claims them all, they all
    follow ``location`` (the redirect counts bound that).

    A ``/route`` that does not answer (the network, an error, a node without it) is
    no reason to stop: the whole group then follows ``location`` too.
    """
    channels = group.tracker.channels
    everything = dict.fromkeys(channels, location)
    if len(channels) == 1:
        return everything
    moves: dict[ChannelName, str] = {}
    try:
        for channel in channels:
            response = await http.get("/route", params={"channel": channel})
            if response.status_code != 200:
                raise request_error(response)
            owner = node_base(decode("route answer", response.content, RouteAnswer).url)
            if owner != group.url:
                moves[channel] = owner
    except (httpx.HTTPError, TidingsError) as exc:
        logger.info("GET /route of %s failed (%r); following the redirect", group.url, exc)
        return everything
    return moves or everything
