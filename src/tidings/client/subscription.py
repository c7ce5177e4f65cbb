"""A subscription: channels' publications over any transport, reconnecting and resuming.

I/O: runs one background task (the *producer*) per subscription, and under it one
task per node serving some of its channels; the application iterates on its own task.
This module owns the reconnect policy and the choice of transport; each transport is a
``Connector`` (websocket.py, sse.py, poll.py) and every one of them feeds the
``PositionTracker`` of the channels it carries.

Theory of operation
-------------------
Each group (see owner routing below) runs connections one after another. Each ends by
an exception, which ``reconnect.outcome_of`` sorts into four kinds:

* STOP: the server said not to come back (close 4000–4499, ``disconnect`` with
  ``reconnect: false``, an HTTP 400/401/403/404/413 error of the server) or spoke
  something this client cannot read. The exception reaches the application, after the
  events queued before it.
* RECONNECT: the network failed, the link went silent, or the server asked the
  client to come back (1001, 1012, 4500–4999, 429/500/503). Wait a backoff delay
  (exponential, full jitter; reset once a connection subscribed), or the ``delay`` the
  server's ``disconnect`` gave (a draining node spreads its clients' reconnects so),
  then connect again from the tracker's positions.
* UNREACHABLE: no TCP connection could be made (refused, unknown host, connect
  timeout): the server is down, for every transport alike. Reconnect as above.
* REFUSED: the transport's handshake was answered by something that is not tidings
  (``TransportRefused``: a proxy's 403 or 404 on ``/ws``). A fixed transport stops:
  it cannot work on this network. (A proxy's 5xx, 408 or 429 is a RECONNECT.)

``transport="auto"`` (``reconnect.TransportRoute``) walks ws → sse → longpoll. It
moves down, without waiting, when a transport is REFUSED, or when a connection ended
before anything of the server's came through it while no transport has worked yet (a
middlebox that resets WebSocket upgrades, or accepts them and passes nothing; a proxy
that buffers event streams). Once something came through a transport it is *kept*:
later failures reconnect on it, as a server restart must not push a client onto long
polling for good. After the last transport fails, and whenever the server is
UNREACHABLE before a transport was kept, it waits a backoff delay and starts again
from the top: a client started while the server is down ends up on WebSocket once
the server is back.

Owner routing (routing.py, docs/protocol.md §9): the channels are kept in groups, one
per node serving them, each running the loop above on connections of its own; at
first one group holds every channel at ``server_url``. A ``Redirected`` (a ``moved``
reply, a ``307``) sends the channels it names to new groups at their owners, with
their positions, and the channels that stay reconnect at once; a ``disconnect`` 4503
with ``url`` sends the whole group there after the usual randomised delay. Groups run
in one task group: a STOP of any ends the subscription.

Events reach the application through a bounded queue. The producer's tracker is
ahead of the application by what is queued, so ``positions`` is the application's
view: the position of the last event it was given in each channel, or where that
channel started. Handing ``positions`` to another subscription (any transport)
resumes exactly after what the application received, even when it stopped reading
with events still queued. A full queue blocks the producer, which stops reading: the
server then sees a slow consumer and closes with 4500, and the client resumes.

Tokens (tokens.py): with a token callable, each connection presents a fresh token,
and a token that expired is one more reason to reconnect: a close 4001 with
``reconnect: true`` (the server's "token expired"), or ``unauthorized`` from a
connection that had got through (a poll run whose token ran out). A token refused on
a connection that never got through stops the subscription: the callable's tokens
are not accepted, and retrying would not change that.

``close`` cancels the producer (its connection closes as the task unwinds) and ends
the iteration, on whichever task the application iterates.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Self
from urllib.parse import urlsplit, urlunsplit

import httpx

from tidings.client.backoff import Backoff
from tidings.client.connector import Attempt, Connector, TransportName
from tidings.client.errors import Redirected
from tidings.client.events import Event, GapNotice
from tidings.client.http import base_url
from tidings.client.poll import LONG_POLL_WAIT_S, PollConnector
from tidings.client.positions import PositionTracker
from tidings.client.reconnect import Outcome, TransportRoute, outcome_of, server_delay_s
from tidings.client.routing import ChannelGroup, Redirects, owners_after_redirect, split_group
from tidings.client.sse import SseConnector
from tidings.client.tokens import Token, Tokens
from tidings.client.websocket import WebSocketConnector
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.publication import Position, Publication
from tidings.errors import ConnectionClosed, Unauthorized

logger = logging.getLogger(__name__)

TransportChoice = Literal["auto", "ws", "sse", "longpoll", "poll"]
# Positions to resume from: ``Subscription.positions`` as is, or written by hand.
Since = Mapping[ChannelName, Position] | Mapping[str, Position]
AUTO_TRANSPORTS: Final[tuple[TransportName, ...]] = ("ws", "sse", "longpoll")
EVENT_QUEUE_SIZE: Final = 1024
# Connections in a row that never opened to the node owner routing sent a group to,
# after which the group goes back to the node the subscription was given.
OWNER_UNREACHABLE_ATTEMPTS: Final = 3


@dataclass(frozen=True, slots=True)
class _Failure:
    """The producer stopped: the application's next ``__anext__`` raises ``error``."""

    error: BaseException


_END: Final = object()  # put by ``close`` for an application waiting on the queue
_Item = Publication | GapNotice | _Failure | object


class Subscription:
    """Publications of channels, over one transport or the first that works.

    Use it as ``async with subscribe(...) as sub: async for event in sub: ...``; events
    are ``Publication`` (in offset order per channel, each once) and ``GapNotice``
    (publications were lost: refetch that channel's state).
    """

    def __init__(
        self,
        server_url: str,
        channels: Sequence[str],
        *,
        transport: TransportChoice = "auto",
        token: Token | None = None,
        since: Since | None = None,
        poll_interval_s: float = 1.0,
        long_poll_wait_s: int = LONG_POLL_WAIT_S,
        backoff: Backoff | None = None,
    ) -> None:
        """Prepare a subscription; it connects when entered or first iterated.

        Args:
            server_url: the server's HTTP address (``http://host:8000``, with any path
                it is mounted under); ``ws://`` and ``wss://`` are accepted too.
            channels: the channels, at least one.
            transport: ``"ws"``, ``"sse"``, ``"longpoll"``, ``"poll"`` (short polling
                every ``poll_interval_s``), or ``"auto"``: ws, else sse, else longpoll.
            token: a connection JWT, sent as ``Authorization: Bearer``; or a callable
                (sync or async) returning a fresh one, called before each connection
                and, over WebSocket, shortly before the token's ``exp`` (the client
                then sends ``refresh``).
            since: positions to resume channels after (``positions`` of an earlier
                subscription); channels without one start from now.
            poll_interval_s: the delay between short polls.
            long_poll_wait_s: how long the server may hold a long poll (1–60 s).
            backoff: reconnection delays (default ``Backoff()``: 0.2 s doubling to 15 s,
                full jitter).

        Raises:
            BadRequest: a channel name is invalid.
            ValueError: no channels, a channel twice, ``since`` for another channel, an
                unknown transport or URL scheme, or a bad interval.
        """
        if transport != "auto" and transport not in ("ws", "sse", "longpoll", "poll"):
            raise ValueError(
                f"transport must be auto, ws, sse, longpoll or poll, got {transport!r}"
            )
        if poll_interval_s < 0:
            raise ValueError(f"poll_interval_s must be >= 0, got {poll_interval_s}")
        if not 1 <= long_poll_wait_s <= 60:
            raise ValueError(f"long_poll_wait_s must be from 1 to 60, got {long_poll_wait_s}")
        self.server_url = base_url(server_url)
        self.channels = tuple(parse_channel(channel) for channel in channels)
        positions = {
            parse_channel(channel): position for channel, position in (since or {}).items()
        }
        # Channels by the node that serves them (routing.py): all at ``server_url`` at
        # first; owner routing moves some to groups of their own.
        self._groups = [ChannelGroup(self.server_url, PositionTracker(self.channels, positions))]
        self._redirects = Redirects()
        self._tasks: asyncio.TaskGroup | None = None
        self._choice: TransportChoice = transport
        self._candidates: tuple[TransportName, ...] = (
            AUTO_TRANSPORTS if transport == "auto" else (transport,)
        )
        self.transport: TransportName = self._candidates[0]
        """The transport in use (or being tried)."""
        self._tokens = Tokens(token)
        self._poll_interval_s = poll_interval_s
        self._long_poll_wait_s = long_poll_wait_s
        self._backoff = backoff or Backoff()
        self._delivered: dict[ChannelName, Position] = {}
        self._queue: asyncio.Queue[_Item] = asyncio.Queue(EVENT_QUEUE_SIZE)
        self._producer: asyncio.Task[None] | None = None
        self._finished = False  # the iteration is over: closed, or the producer stopped

    # -- what the application sees -----------------------------------------------------

    @property
    def positions(self) -> dict[ChannelName, Position]:
        """Where the application is in each channel: resume from these (a copy).

        The position of the last event it was given per channel, or, for a channel it
        got nothing of yet, the position it started from (``since``, or the server's
        when it subscribed). Channels not subscribed yet have none.
        """
        origins: dict[ChannelName, Position] = {}
        for group in self._groups:
            origins.update(group.tracker.origins)
        return {**origins, **self._delivered}

    async def __aenter__(self) -> Self:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Event:
        if self._finished:
            raise StopAsyncIteration
        self._start()
        item = await self._queue.get()
        if isinstance(item, Publication | GapNotice):
            self._delivered[item.channel] = item.position
            return item
        self._finished = True
        if isinstance(item, _Failure):
            raise item.error
        raise StopAsyncIteration

    async def close(self) -> None:
        """Disconnect and end the iteration; idempotent.

        Events not yet iterated are dropped; ``positions`` stays after the last one given.
        """
        self._finished = True
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(_END)  # wakes an iteration waiting on another task

    # -- the producer ------------------------------------------------------------------

    def _start(self) -> None:
        if self._producer is None and not self._finished:
            self._producer = asyncio.create_task(self._produce(), name=f"tidings {self.channels}")

    async def _produce(self) -> None:
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                for group in self._groups:
                    tasks.create_task(self._run_group(group))
        except asyncio.CancelledError:
            raise
        except BaseExceptionGroup as failures:  # a task boundary: the application gets it
            exc = _first_leaf(failures)
            logger.info("subscription to %s stopped: %r", self.server_url, exc)
            await self._queue.put(_Failure(exc))

    async def _run_group(self, group: ChannelGroup) -> None:
        """Run the connections of ``group`` one after another, until its channels are
        all served elsewhere (routing.py) or a STOP."""
        # No Authorization here: each stream or run of polls sets its own token.
        async with httpx.AsyncClient(base_url=group.url) as http:
            connectors = {connector.name: connector for connector in self._connectors(group, http)}
            route = TransportRoute(self._candidates, auto=self._choice == "auto")
            backoff = copy.copy(self._backoff)
            backoff.reset()
            unreachable = 0  # connections in a row that never opened
            while True:
                connector = connectors[route.current]
                self.transport = connector.name
                attempt = Attempt()
                logger.info("connecting to %s over %s", group.url, connector.name)
                try:
                    await self._run_session(connector, group.tracker, attempt)
                    failure: Exception = ConnectionResetError(f"the {connector.name} session ended")
                except Exception as exc:  # every ending is sorted below; STOP re-raises it
                    failure = exc
                if attempt.subscribed:
                    self._redirects.receive_served(group.tracker.channels)
                    backoff.reset()
                unreachable = 0 if attempt.connected else unreachable + 1
                if unreachable >= OWNER_UNREACHABLE_ATTEMPTS and group.url != self.server_url:
                    # The owner this group was sent to no longer answers (it died): ask
                    # the node first given again, which sends the channels to their
                    # owner now (docs/protocol.md §9), instead of knocking for ever.
                    logger.info(
                        "%s does not answer; asking %s for the owner again",
                        group.url,
                        self.server_url,
                    )
                    # Not a redirect of a node's: it starts the channels' count afresh
                    # (while the ring still names the dead owner, the bounce repeats,
                    # at the pace of the connections' backoff).
                    self._redirects.receive_served(group.tracker.channels)
                    self._follow(group, dict.fromkeys(group.tracker.channels, self.server_url))
                    return
                if isinstance(failure, Redirected):
                    moves = failure.moves
                    if not moves and failure.url is not None:
                        moves = await owners_after_redirect(http, group, failure.url)
                    if not self._follow(group, moves):
                        return
                    continue  # the channels that stay reconnect at once
                delay_s = self._after_failure(failure, attempt, route, backoff)
                if delay_s is None:
                    continue
                logger.info(
                    "%s connection to %s ended (%s); reconnecting in %.2f s",
                    connector.name,
                    group.url,
                    failure,
                    delay_s,
                )
                await asyncio.sleep(delay_s)
                url = failure.url if isinstance(failure, ConnectionClosed) else None
                if url is not None:
                    # 4503 with ``url`` (docs/protocol.md §9): the connection's own key
                    # moved; its channels resume on the owner.
                    self._follow(group, dict.fromkeys(group.tracker.channels, url))
                    return

    def _after_failure(
        self, failure: Exception, attempt: Attempt, route: TransportRoute, backoff: Backoff
    ) -> float | None:
        """Sort a connection's end: raise it (STOP), or return how long to wait before
        the next connection (``None``: try the next transport at once)."""
        outcome = outcome_of(failure)
        if outcome is Outcome.STOP and self._is_token_expiry(failure, attempt):
            outcome = Outcome.RECONNECT  # a fresh token comes with the next connection
        if outcome is Outcome.STOP or (outcome is Outcome.REFUSED and not route.auto):
            raise failure  # a fixed transport that is refused for good cannot work
        if not route.receive_failure(outcome, connected=attempt.connected):
            logger.warning("transport failed (%s); trying %s", failure, route.current)
            return None
        delay_s = server_delay_s(failure)
        return backoff.next_delay_s() if delay_s is None else delay_s

    def _follow(self, group: ChannelGroup, moves: Mapping[ChannelName, str]) -> bool:
        """Send the channels ``moves`` names to their owners, each in a new group with
        connections of its own; return whether any channel stays in ``group``.

        Raises:
            TooManyRedirects: a channel was redirected too often in a row (routing.py).
        """
        for channel in group.tracker.channels:
            if channel in moves:
                self._redirects.receive_moved(channel, moves[channel])
        kept, moved = split_group(group, moves)
        self._groups.remove(group)
        if kept is not None:
            group.tracker = kept.tracker
            self._groups.append(group)
        for new in moved:
            logger.info("%s served by %s", ", ".join(new.tracker.channels), new.url)
            self._groups.append(new)
            assert self._tasks is not None  # groups run inside the producer's task group
            self._tasks.create_task(self._run_group(new))
        return kept is not None

    def _is_token_expiry(self, failure: Exception, attempt: Attempt) -> bool:
        """Whether ``failure`` is a token that ran out on a connection that had got
        through, which a fresh token from the callable mends."""
        return self._tokens.is_renewable and attempt.connected and isinstance(failure, Unauthorized)

    async def _run_session(
        self, connector: Connector, tracker: PositionTracker, attempt: Attempt
    ) -> None:
        """Queue the events of one connection until it ends (by raising)."""
        # aclosing: a cancel (``close``) while an event is being queued still closes
        # the connection now, not whenever the generator is collected.
        async with contextlib.aclosing(connector.session(tracker, attempt)) as batches:
            async for events in batches:
                for event in events:
                    if isinstance(event, GapNotice):
                        # INFO: the application is told by the event itself.
                        logger.info(
                            "gap in %s: after %s the server is at %s",
                            event.channel,
                            event.since,
                            event.position,
                        )
                    await self._queue.put(event)

    def _connectors(self, group: ChannelGroup, http: httpx.AsyncClient) -> list[Connector]:
        made: dict[TransportName, Connector] = {
            "ws": WebSocketConnector(_ws_url(group.url), self._tokens),
            "sse": SseConnector(http, tokens=self._tokens),
            "longpoll": PollConnector(http, wait_s=self._long_poll_wait_s, tokens=self._tokens),
            "poll": PollConnector(
                http, wait_s=0, interval_s=self._poll_interval_s, tokens=self._tokens
            ),
        }
        return [made[name] for name in self._candidates]


def subscribe(
    server_url: str,
    *channels: str,
    transport: TransportChoice = "auto",
    token: Token | None = None,
    since: Since | None = None,
    poll_interval_s: float = 1.0,
    long_poll_wait_s: int = LONG_POLL_WAIT_S,
    backoff: Backoff | None = None,
) -> Subscription:
    """Subscribe to ``channels`` of the server at ``server_url``.

    ``async with subscribe(url, "room:45") as sub: async for event in sub: ...``; see
    ``Subscription`` for the arguments.

    Raises:
        BadRequest: a channel name is invalid.
        ValueError: no channels, a channel twice, or another bad argument.
    """
    return Subscription(
        server_url,
        channels,
        transport=transport,
        token=token,
        since=since,
        poll_interval_s=poll_interval_s,
        long_poll_wait_s=long_poll_wait_s,
        backoff=backoff,
    )


class WebSocketSubscription(Subscription):
    """A ``Subscription`` over WebSocket only, given the ``/ws`` URL (the earlier API)."""

    def __init__(
        self,
        url: str,
        channels: Sequence[str],
        *,
        token: Token | None = None,
        since: Since | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        """Subscribe over ``url`` (``ws://host:port/ws``); see ``Subscription``."""
        base = url.rstrip("/").removesuffix("/ws")
        super().__init__(base, channels, transport="ws", token=token, since=since, backoff=backoff)


def _ws_url(http_url: str) -> str:
    parts = urlsplit(http_url)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return urlunsplit((scheme, parts.netloc, f"{parts.path}/ws", "", ""))


def _first_leaf(failures: BaseExceptionGroup[BaseException]) -> Exception:
    """The first exception of a task group's failures (one group stopped; the task group
    cancelled the others)."""
    for failure in failures.exceptions:
        if isinstance(failure, BaseExceptionGroup):
            return _first_leaf(failure)
        if isinstance(failure, Exception):
            return failure
    raise failures
