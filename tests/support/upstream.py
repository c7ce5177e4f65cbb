"""A fake upstream for the relay broker: the test plays the upstream node.

``FollowingLink`` records what the relay follows and answers each ``follow`` at once
with the head the test set (``recovered: false``, as an upstream answers a subscribe
without a position); the test then hands publications to the relay through
``listener`` as the upstream would. ``RetainingApi`` answers history reads from the
publications the test says the upstream retains, and counts them.
"""

from __future__ import annotations

import asyncio

from tidings.brokers.base import HistoryRead, PublishResult
from tidings.brokers.relay_link import UpstreamListener
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay, decide_recovery, latest
from tidings.errors import BrokerUnavailable


class FollowingLink:
    """An ``UpstreamLink`` whose upstream is the test."""

    def __init__(self, head: Position, *, connected: bool = True) -> None:
        self.head = head
        self.connected = connected
        self.followed: list[ChannelName] = []
        self.unfollowed: list[ChannelName] = []
        self._listener: UpstreamListener | None = None

    @property
    def listener(self) -> UpstreamListener:
        """The relay, as the link reports to it."""
        assert self._listener is not None, "the relay is not started"
        return self._listener

    @property
    def is_connected(self) -> bool:
        return self.connected

    def start(self, listener: UpstreamListener) -> None:
        self._listener = listener

    async def wait_connected(self) -> None:
        return

    async def close(self) -> None:
        self.connected = False

    async def follow(self, channel: ChannelName) -> None:
        self.followed.append(channel)
        self.listener.receive_subscribed(channel, self.head, False, ())

    async def unfollow(self, channel: ChannelName) -> None:
        self.unfollowed.append(channel)


class RetainingApi:
    """An ``UpstreamCalls`` whose upstream retains ``retained`` (consecutive, one epoch)
    and is at ``head``; it counts the history reads it answers."""

    def __init__(self, head: Position, retained: list[Publication]) -> None:
        self.head = head
        self.retained = retained
        self.history_reads = 0

    async def aclose(self) -> None:
        return

    async def publish(
        self, channel: ChannelName, data: bytes, key: str | None, info: ClientInfo | None
    ) -> PublishResult:
        raise BrokerUnavailable("this fake upstream takes no publications")

    async def history(
        self, channel: ChannelName, since: Position | None, limit: int | None
    ) -> HistoryRead:
        self.history_reads += 1
        await asyncio.sleep(0)  # an answer comes later than the call, as over HTTP
        if since is None:
            return HistoryRead(self.head, Replay(latest(self.retained, limit)))
        recovery = decide_recovery(since, self.head.epoch, self.head.offset, self.retained, limit)
        return HistoryRead(self.head, recovery)

    async def is_ready(self) -> bool:
        return True
