"""The client's ``longpoll`` and ``poll`` transports: ``GET /poll`` in a loop (docs/protocol.md §5).

HTTP I/O over httpx. Long polling asks with ``wait`` (the server holds the request
until a publication arrives or ``wait`` seconds pass) and polls again at once; short
polling asks with ``wait=0`` every ``interval_s``, sending the last cursor as
``If-None-Match`` so that "nothing new" is a cheap ``304``. Either polls again at once
when an answer was full (``limit`` publications: more remain).

Every answer says where it leaves each channel (``positions``, docs/protocol.md 1.1 §5):
that is how the tracker tells which channel a ``recovered: false`` answer moved, and
what positions a later switch to another transport hands over. The cursor stays
opaque: it is handed back as long as the positions it came with are the tracker's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Final

import httpx

from tidings.client.connector import Attempt, TransportName
from tidings.client.errors import ProtocolViolation
from tidings.client.events import Event
from tidings.client.frames import PollAnswer, decode, to_publications
from tidings.client.http import check_answer
from tidings.client.positions import PositionTracker, channel_params
from tidings.client.tokens import Tokens
from tidings.core.channel import ChannelName
from tidings.core.publication import Position

logger = logging.getLogger(__name__)

LONG_POLL_WAIT_S: Final = 25
POLL_LIMIT: Final = 100
CONNECT_TIMEOUT_S: Final = 10.0
# How much longer than ``wait`` an answer may take before the request is given up.
ANSWER_MARGIN_S: Final = 10.0
NOT_MODIFIED: Final = 304


class PollConnector:
    """Polls of one server's ``/poll``: long (``wait_s`` > 0) or short (``wait_s`` = 0)."""

    __slots__ = (
        "_cursor",
        "_cursor_positions",
        "_http",
        "_interval_s",
        "_limit",
        "_tokens",
        "_wait_s",
    )

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        wait_s: int = LONG_POLL_WAIT_S,
        interval_s: float = 1.0,
        limit: int = POLL_LIMIT,
        tokens: Tokens | None = None,
    ) -> None:
        """Poll through ``http`` (its ``base_url`` is the server), with a token of
        ``tokens`` fetched for each run of polls: long polls holding ``wait_s`` (1–60),
        or short polls (``wait_s=0``) every ``interval_s``.

        Raises:
            ValueError: ``wait_s`` not in 0–60, ``limit`` not in 1–1000, or a negative
                interval.
        """
        if not 0 <= wait_s <= 60:
            raise ValueError(f"wait_s must be from 0 to 60 (seconds), got {wait_s}")
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be from 1 to 1000, got {limit}")
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {interval_s}")
        self._http = http
        self._wait_s = wait_s
        self._interval_s = interval_s
        self._limit = limit
        self._cursor: str | None = None
        self._tokens = tokens or Tokens(None)
        # The positions the last answer gave along with ``_cursor``: what it names.
        self._cursor_positions: dict[ChannelName, Position] = {}

    @property
    def name(self) -> TransportName:
        """``"longpoll"`` or ``"poll"``."""
        return "longpoll" if self._wait_s else "poll"

    async def session(
        self, tracker: PositionTracker, attempt: Attempt
    ) -> AsyncGenerator[list[Event], None]:
        """Poll until a poll fails, yielding what each answer brings (see ``Connector``).

        Raises:
            TransportRefused: something other than a tidings poll answer came back.
            Redirected: a ``307``: the channels are served by another node.
            RequestError: the server refused the poll (its error code).
            httpx.TransportError: the network failed.
        """
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=self._wait_s + ANSWER_MARGIN_S)
        # One token per run: once it expires the server refuses a poll (401), and the
        # subscription starts another run with a fresh one.
        token = await self._tokens.fresh()
        while True:
            params = channel_params(tracker.channels)
            headers: dict[str, str] = {"Authorization": f"Bearer {token}"} if token else {}
            # The last cursor, while it names exactly the tracker's positions (a tracker
            # never moves back, so it may hold more than an answer gave).
            cursor = self._cursor if self._cursor_positions == tracker.positions else None
            if cursor is not None:
                params.append(("cursor", cursor))
                if not self._wait_s:
                    headers["If-None-Match"] = f'"{cursor}"'
            else:
                params += tracker.since_params()
            params += [("wait", str(self._wait_s)), ("limit", str(self._limit))]
            response = await self._http.get(
                "/poll", params=tuple(params), headers=headers, timeout=timeout
            )
            full = False
            if response.status_code != NOT_MODIFIED:
                await check_answer(response, self.name, "application/json")
                answer = decode("poll answer", response.content, PollAnswer)
                events = self._receive(answer, tracker)
                full = len(answer.publications) >= self._limit
                attempt.connected = attempt.subscribed = True
                if events:
                    yield events
            else:
                attempt.connected = attempt.subscribed = True
            if not full and not self._wait_s:
                await asyncio.sleep(self._interval_s)

    def _receive(self, answer: PollAnswer, tracker: PositionTracker) -> list[Event]:
        after = {
            ChannelName(channel): Position(position.epoch, position.offset)
            for channel, position in answer.positions.items()
        }
        if set(after) != set(tracker.channels):
            raise ProtocolViolation(
                f"the poll answer gives positions of {sorted(after)}; "
                f"it was asked for {sorted(tracker.channels)}"
            )
        events = tracker.receive_page(
            to_publications(answer.publications), after, recovered=answer.recovered
        )
        self._cursor = answer.cursor
        self._cursor_positions = after
        return events
