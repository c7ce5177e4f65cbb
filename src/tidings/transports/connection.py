"""The part of a streaming client connection every transport shares: identity, held
subscriptions, and the slow-consumer bound on its ``Outbound``.

No I/O of its own: chunks go to the connection's ``Outbound`` (``outbound.py``), which
the server backend chose: a queue drained by a writer task under ASGI, or writes
straight to the socket under the native server. Hub fan-out and command replies never
wait, so a publisher never waits for a client. What waits to be sent is bounded
(``outbound_buffer``): past it the client is a slow consumer, what can still be
dropped is dropped and it is disconnected with 4500 and reconnect advice, so it resumes
later from its position while the server's memory stays bounded (docs/protocol.md §7). What
the client asked for (command replies, a stream's opening replay) is not cut but held
back instead: while more than the bound waits to be sent, the transport reads no
further command and writes no further replay until it has left
(``has_reply_backlog``, ``wait_replies_taken``). A disconnect sends the transport's
goodbye after what is already pending, then ends the connection.

A connection whose token carries ``exp`` is disconnected when it expires (4001, "token
expired", reconnect advised: the client gets a fresh token and comes back) unless a
new token replaced it first (the WebSocket ``refresh`` command). Expiries are deadlines
on the node's one wheel (``TransportContext.deadlines``), not a timer per connection.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Final

from tidings.core.channel import ChannelName
from tidings.core.permission import ANONYMOUS, Credentials
from tidings.core.wire import EncodedPublication
from tidings.hub.registry import PresenceEvent
from tidings.transports.close_codes import (
    CLOSE_PUBLICATIONS_LOST,
    CLOSE_SLOW_CONSUMER,
    CLOSE_UNAUTHORIZED,
)
from tidings.transports.context import TransportContext
from tidings.transports.deadlines import Deadline
from tidings.transports.outbound import Outbound

logger = logging.getLogger(__name__)

TOKEN_EXPIRED: Final = "token expired"


class StreamConnection(ABC):
    """A client connection that receives pushes; subclasses say how bytes go out."""

    __slots__ = (
        "_active",
        "_allowance",
        "_bound",
        "_closing",
        "_context",
        "_expiry",
        "_out",
        "client_id",
        "credentials",
        "is_relay",
        "last_sent_s",
        "peer",
        "subscriptions",
    )

    def __init__(self, context: TransportContext, out: Outbound) -> None:
        self._context = context
        self._out = out
        self.client_id = context.new_client_id()
        self.credentials: Credentials = ANONYMOUS
        self.subscriptions: set[ChannelName] = set()
        self.peer: tuple[str, int] | None = None  # the client's address, for the log
        # A relay's upstream link (its request said so): delivered to first (hub).
        self.is_relay = False
        self._closing: tuple[int, str] | None = None
        self._expiry: Deadline | None = None
        # Requested bytes still pending: exempt from the slow-consumer bound.
        self._allowance = 0
        self._bound = context.limits.outbound_buffer_bytes
        # Whether anything was sent since the last heartbeat tick: a flag, so that a
        # delivery costs no clock read.
        self._active = False
        self.last_sent_s = time.monotonic()

    # A connection is one client in the node's subscriber counts.
    clients = 1

    @property
    def user(self) -> str:
        """The authenticated user id, ``""`` if anonymous."""
        return self.credentials.user

    @property
    def is_closing(self) -> bool:
        """Whether a disconnect was queued: nothing more will be sent after it."""
        return self._closing is not None

    # -- what a transport provides -----------------------------------------------------

    @abstractmethod
    def deliver(self, publication: EncodedPublication) -> None:
        """Queue a publication of a subscribed channel (hub fan-out)."""

    @abstractmethod
    def deliver_presence(self, event: PresenceEvent) -> None:
        """Queue a join/leave event of a subscribed channel (hub)."""

    def report_gap(self, channel: ChannelName) -> None:
        """Publications of ``channel`` were lost: disconnect so the client resumes and
        hears ``recovered: false`` (a stream cannot mark a hole in itself)."""
        self.disconnect(
            CLOSE_PUBLICATIONS_LOST, f"publications of {channel} were lost; resume", reconnect=True
        )

    @abstractmethod
    def _goodbye(
        self, code: int, reason: str, reconnect: bool, url: str | None, delay_ms: int | None
    ) -> str:
        """Return the transport's ``disconnect`` message."""

    @abstractmethod
    def _heartbeat_chunk(self) -> str:
        """Return what is sent to a connection that has been silent too long."""

    @property
    @abstractmethod
    def _heartbeat_interval_s(self) -> float:
        """How long a connection may stay silent before a heartbeat."""

    # -- sending (never blocks) -------------------------------------------------------

    def _enqueue(self, chunk: str, *, requested: bool = False) -> None:
        """Send ``chunk``; a push past the outbound bound makes this a slow consumer.

        ``requested`` marks what the client itself asked for: a command's reply, a
        stream's opening replay. One reply's size is bounded by configuration (history
        size times data size), not by the publication rate, and past the bound (or
        after a large reply) the transport takes no further command until what is
        pending has mostly left (``wait_replies_taken``), so it is left out of the
        slow-consumer count: a recovery larger than the buffer still completes instead
        of being cut, and cut again on every retry.
        """
        if self._closing is not None:
            return
        out = self._out
        if requested:
            out.put(chunk)
            self._allowance = out.pending_bytes
            self._active = True
            return
        pending = out.pending_bytes
        self._allowance = min(self._allowance, pending)  # part of the requested backlog has left
        if pending - self._allowance + len(chunk) > self._bound:
            self._cut_slow_consumer(pending)
            return
        out.put(chunk)
        self._active = True

    def has_reply_backlog(self) -> bool:
        """Whether more than the outbound bound waits to be sent: then a reader takes no
        further command (a stream no further replay) until ``wait_replies_taken``."""
        return self._out.pending_bytes > self._bound

    def _cut_slow_consumer(self, pending: int) -> None:
        self._context.refusals.refused(
            "slow_consumer", self.peer, f"{pending:,} bytes pending ({self.client_id})"
        )
        self._out.discard_pending()
        self.disconnect(CLOSE_SLOW_CONSUMER, "slow consumer", reconnect=True)

    async def wait_replies_taken(self) -> None:
        """Return once what was sent so far has mostly left (reader backpressure)."""
        if self._closing is None:
            await self._out.wait_sent()

    def heartbeat(self, now_s: float) -> None:
        """Send a heartbeat if nothing was sent for the heartbeat interval.

        Called on every tick of the node's one heartbeat timer: a connection that sent
        something since the last tick counts as having sent at this tick.
        """
        if self._active:
            self._active = False
            self.last_sent_s = now_s
        elif not self._out.pending_bytes and now_s - self.last_sent_s >= self._heartbeat_interval_s:
            self._enqueue(self._heartbeat_chunk())

    def disconnect(
        self,
        code: int,
        reason: str,
        *,
        reconnect: bool,
        url: str | None = None,
        delay_ms: int | None = None,
    ) -> None:
        """Send the transport's ``disconnect`` after what is pending, then end with ``code``.

        ``delay_ms`` (docs/protocol.md §3, 1.1) tells the client how long to wait before it
        reconnects: a drain gives each client its own (``core.drain``).
        """
        if self._closing is not None:
            return
        self._closing = (code, reason)
        self._context.refusals.disconnected(code)
        goodbye = self._goodbye(code, reason, reconnect, url, delay_ms)
        self._out.finish(goodbye, code, reason)

    def watch_expiry(self) -> None:
        """(Re)start the deadline of ``credentials.expires``; call after each change of
        credentials. Already expired: disconnect at once."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        expires = self.credentials.expires
        if expires is None or self._closing is not None:
            return
        remaining_s = expires - time.time()
        if remaining_s <= 0:
            self._expired()
        else:
            self._expiry = self._context.deadlines.call_after(remaining_s, self._expired)

    def _expired(self) -> None:
        self._expiry = None
        self.disconnect(CLOSE_UNAUTHORIZED, TOKEN_EXPIRED, reconnect=True)

    async def _stop_outbound(self) -> None:
        """At the connection's end: let a goodbye in progress flush (bounded), or stop
        at once if the client ended the connection."""
        await self._out.stop(client_left=self._closing is None)

    async def _leave_all(self) -> None:
        if self._expiry is not None:  # the connection ends: its expiry no longer matters
            self._expiry.cancel()
            self._expiry = None
        hub = self._context.hub
        namespaces = self._context.namespaces
        for channel in list(self.subscriptions):
            await hub.unsubscribe(channel, self, presence=namespaces.options_for(channel).presence)
        self.subscriptions.clear()
