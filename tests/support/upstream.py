"""A fake upstream link for the relay broker: the test plays the upstream node.

``FollowingLink`` records what the relay follows and answers each ``follow`` at once
with the head the test set (``recovered: false``, as an upstream answers a subscribe
without a position); the test then hands publications to the relay through
``listener`` as the upstream would.
"""

from __future__ import annotations

from tidings.brokers.relay_link import UpstreamListener
from tidings.core.channel import ChannelName
from tidings.core.publication import Position


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
