"""A relay's link to its upstream node over Server-Sent Events, for networks that pass
only plain HTTP: one ``/sse`` stream per followed channel (docs/protocol.md §4),
reconnecting and resuming. I/O over ``httpx``.

A stream's channels are fixed when it opens, and a relay's channels come and go, so
each followed channel has its own stream, run by its own task. Each stream opens with
``since=`` the listener's position (``position_of``): its ``subscribed`` event says
whether the upstream recovered it, and the replayed publications follow as ``pub``
events, then the live ones. A stream that ends (network, ``disconnect``, a silence of
twice the upstream's 15 s heartbeat) is opened again after a backoff delay, from the
listener's position then: nothing lost, nothing repeated.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

import httpx

from tidings.brokers.relay_link import TokenSource, UpstreamListener, new_backoff
from tidings.client.frames import Subscribed, decode, to_publication
from tidings.client.http import request_error
from tidings.client.sse import CONNECT_TIMEOUT_S, READ_TIMEOUT_S, EventStreamDecoder
from tidings.core.backoff import Backoff
from tidings.core.channel import ChannelName
from tidings.core.node_call import RELAY_HEADER
from tidings.core.publication import Position
from tidings.core.wire import PublicationFrame

logger = logging.getLogger(__name__)

# Statuses after which trying again cannot help (the stream's channel or token is refused).
_REFUSALS: Final = (400, 401, 403, 404, 413)


class SseLink:
    """One ``/sse`` stream per followed channel; see the module docstring."""

    def __init__(self, base_url: str, token: TokenSource) -> None:
        """Link to the node at ``base_url`` (``http://host:port``) with ``token()``
        (called for each stream) as a bearer token."""
        self.url = base_url
        self._token = token
        # Saying it is a relay puts this link first in the upstream's fan-out.
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", RELAY_HEADER: "1"}
        timeout = httpx.Timeout(CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S)
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout)
        self._listener: UpstreamListener | None = None
        self._streams: dict[ChannelName, asyncio.Task[None]] = {}
        self._failing: set[ChannelName] = set()

    @property
    def is_connected(self) -> bool:
        """Whether no stream is failing now."""
        return not self._failing

    async def wait_connected(self) -> None:
        """Return at once: streams open as channels are followed."""

    def start(self, listener: UpstreamListener) -> None:
        """Take the listener; streams open as channels are followed."""
        self._listener = listener

    async def close(self) -> None:
        """Cancel every stream and close the HTTP client."""
        for channel in list(self._streams):
            await self.unfollow(channel)
        await self._http.aclose()

    async def follow(self, channel: ChannelName) -> None:
        """Open a stream of ``channel`` (in its own task)."""
        if channel not in self._streams:
            self._streams[channel] = asyncio.create_task(
                self._run(channel), name=f"tidings-relay-sse-{channel}"
            )

    async def unfollow(self, channel: ChannelName) -> None:
        """Close ``channel``'s stream."""
        task = self._streams.pop(channel, None)
        self._failing.discard(channel)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, channel: ChannelName) -> None:
        backoff = new_backoff()
        while True:
            try:
                await self._stream(channel, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a task boundary: any failure means reopen
                self._failing.add(channel)
                logger.warning("relay stream of %s from %s lost: %s", channel, self.url, exc)
            await asyncio.sleep(backoff.next_delay_s())

    async def _stream(self, channel: ChannelName, backoff: Backoff) -> None:
        listener = self._listener
        assert listener is not None
        params = [("channel", str(channel))]
        position = listener.position_of(channel)
        if position is not None:
            params.append(("since", f"{position.epoch}:{position.offset}"))
        token = self._token()
        headers = {"Authorization": f"Bearer {token}"} if token else None
        async with self._http.stream(
            "GET", "/sse", params=tuple(params), headers=headers
        ) as response:
            if response.status_code != 200:
                await response.aread()
                error = request_error(response)
                if response.status_code in _REFUSALS:
                    listener.receive_refusal(channel, error)
                raise error
            decoder = EventStreamDecoder()
            async for line in response.aiter_lines():
                event = decoder.receive_line(line)
                if event is None:
                    continue
                if event.type == "pub":
                    frame = decode("pub event", event.data, PublicationFrame)
                    listener.receive_publication(to_publication(frame))
                elif event.type == "subscribed":
                    start = decode("subscribed event", event.data, Subscribed).channels[channel]
                    self._failing.discard(channel)
                    backoff.reset()
                    head = Position(start.epoch, start.offset)
                    listener.receive_subscribed(channel, head, start.recovered, ())
                elif event.type == "disconnect":
                    logger.info("upstream ends the relay's stream of %s: %s", channel, event.data)
                    break
        raise ConnectionResetError("the upstream ended the stream")
