"""The part of a streaming client connection every transport shares: identity, held
subscriptions, and a bounded outbound queue drained by one writer task.

I/O: the writer awaits the transport's ``_write``. Hub fan-out and command replies only
*queue* pre-encoded text (``_enqueue``), so a publisher never waits for a client. The
queue is bounded in bytes (``outbound_buffer``): past it the client is a slow consumer,
its queue is dropped and it is disconnected with 4500 and reconnect advice, so it
resumes later from its position while the server's memory stays bounded (PROTOCOL.md
§7). A disconnect queues the transport's goodbye after what is already queued; the
writer sends it, then ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections import deque
from typing import Final

from tidings.core.channel import ChannelName
from tidings.core.permission import ANONYMOUS, Credentials
from tidings.core.wire import EncodedPublication
from tidings.hub.registry import PresenceEvent
from tidings.transports.close_codes import CLOSE_PUBLICATIONS_LOST, CLOSE_SLOW_CONSUMER
from tidings.transports.context import TransportContext

logger = logging.getLogger(__name__)

# How long a closing connection may take to flush its queue before it is cut.
CLOSE_FLUSH_TIMEOUT_S: Final = 5.0


class StreamConnection(ABC):
    """A client connection that receives pushes; subclasses say how bytes go out."""

    __slots__ = (
        "_closing",
        "_context",
        "_outbox",
        "_queued",
        "_taken",
        "_wakeup",
        "_writer",
        "client_id",
        "credentials",
        "last_sent_s",
        "subscriptions",
    )

    def __init__(self, context: TransportContext) -> None:
        self._context = context
        self.client_id = context.new_client_id()
        self.credentials: Credentials = ANONYMOUS
        self.subscriptions: set[ChannelName] = set()
        self._outbox: deque[str] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._taken = asyncio.Event()
        self._closing: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None
        self.last_sent_s = time.monotonic()

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
    async def _write(self, chunks: list[str]) -> None:
        """Send queued chunks, in order."""

    @abstractmethod
    async def _end(self, code: int, reason: str) -> None:
        """End the connection after the goodbye was sent."""

    @abstractmethod
    def _goodbye(self, code: int, reason: str, reconnect: bool, url: str | None) -> str:
        """Return the transport's ``disconnect`` message."""

    @abstractmethod
    def _heartbeat_chunk(self) -> str:
        """Return what is sent to a connection that has been silent too long."""

    @property
    @abstractmethod
    def _heartbeat_interval_s(self) -> float:
        """How long a connection may stay silent before a heartbeat."""

    # -- queueing (never blocks) -------------------------------------------------------

    def _enqueue(self, chunk: str, *, requested: bool = False) -> None:
        """Queue ``chunk``; a push past the outbound bound makes this a slow consumer.

        ``requested`` marks what the client itself asked for: a command's reply, a
        stream's opening replay. Its size is bounded by configuration (history size
        times data size), not by the publication rate, and the reader takes no further
        command until the writer has taken it (``wait_replies_taken``), so it is left
        out of the slow-consumer count: a recovery larger than the buffer still
        completes instead of being cut, and cut again on every retry.
        """
        if self._closing is not None:
            return
        if not requested:
            self._queued += len(chunk)
            if self._queued > self._context.limits.outbound_buffer_bytes:
                logger.warning(
                    "slow consumer %s dropped: %d bytes queued", self.client_id, self._queued
                )
                self._outbox.clear()
                self._queued = 0
                self.disconnect(CLOSE_SLOW_CONSUMER, "slow consumer", reconnect=True)
                return
        self._outbox.append(chunk)
        self._wakeup.set()

    async def wait_replies_taken(self) -> None:
        """Return once the writer has taken everything queued so far (reader backpressure)."""
        while self._outbox and self._closing is None and self._writer is not None:
            self._taken.clear()
            await self._taken.wait()

    def heartbeat(self, now_s: float) -> None:
        """Queue a heartbeat if nothing was sent for the heartbeat interval."""
        if not self._outbox and now_s - self.last_sent_s >= self._heartbeat_interval_s:
            self._enqueue(self._heartbeat_chunk())

    def disconnect(
        self, code: int, reason: str, *, reconnect: bool, url: str | None = None
    ) -> None:
        """Send the transport's ``disconnect`` after what is queued, then end with ``code``."""
        if self._closing is not None:
            return
        self._outbox.append(self._goodbye(code, reason, reconnect, url))
        self._closing = (code, reason)
        self._wakeup.set()

    # -- the writer ----------------------------------------------------------------------

    def _start_writer(self) -> None:
        self._writer = asyncio.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        outbox = self._outbox
        try:
            while True:
                if not outbox:
                    if self._closing is not None:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                # Everything queued goes in one call: bursts coalesce per connection.
                chunks = list(outbox)
                outbox.clear()
                self._queued = 0
                self._taken.set()
                await self._write(chunks)
                self.last_sent_s = time.monotonic()
            code, reason = self._closing
            await self._end(code, reason)
        except OSError:
            return  # the client is gone (uvicorn's ClientDisconnected); the reader sees it

    async def _stop_writer(self) -> None:
        """Let the writer flush a queued goodbye (bounded), or stop it if the client left."""
        writer = self._writer
        if writer is None:
            return
        if self._closing is None:
            writer.cancel()  # the client ended the connection: nothing more to say
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(writer, timeout=CLOSE_FLUSH_TIMEOUT_S)

    async def _leave_all(self) -> None:
        hub = self._context.hub
        namespaces = self._context.namespaces
        for channel in list(self.subscriptions):
            await hub.unsubscribe(channel, self, presence=namespaces.options_for(channel).presence)
        self.subscriptions.clear()
