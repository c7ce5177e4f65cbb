"""Fakes for hub tests: a subscriber that records what it is given, a broker wrapper
that records and can hold calls, and a presence store that fails on demand."""

from __future__ import annotations

import asyncio

from tidings.brokers.base import (
    HistoryRead,
    PresenceChange,
    PresenceHandler,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.memory import LocalPresence, MemoryBroker
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position
from tidings.core.wire import EncodedPublication
from tidings.errors import BrokerError
from tidings.hub.registry import PresenceEvent


class RecordingSubscriber:
    """Keeps every publication and presence event delivered; fails on demand."""

    def __init__(self, client_id: str, user: str = "", *, failing: bool = False) -> None:
        self._client_id = client_id
        self._user = user
        self.failing = failing
        self.delivered: list[EncodedPublication] = []
        self.presence: list[PresenceEvent] = []
        self.gaps: list[ChannelName] = []

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def user(self) -> str:
        return self._user

    @property
    def clients(self) -> int:
        return 1

    is_relay = False

    def deliver(self, publication: EncodedPublication) -> None:
        if self.failing:
            raise RuntimeError("this subscriber fails on purpose")
        self.delivered.append(publication)

    def deliver_presence(self, event: PresenceEvent) -> None:
        self.presence.append(event)

    def report_gap(self, channel: ChannelName) -> None:
        self.gaps.append(channel)

    @property
    def offsets(self) -> list[int]:
        """Offsets delivered, in order."""
        return [encoded.publication.offset for encoded in self.delivered]


class RecordingBroker:
    """A memory broker that counts (un)subscribes and can hold ``history`` reads at a gate."""

    def __init__(self, inner: MemoryBroker) -> None:
        self.inner = inner
        self.subscribes: list[ChannelName] = []
        self.unsubscribes: list[ChannelName] = []
        self.history_gate: asyncio.Event | None = None
        self.history_entered = asyncio.Event()
        self.fail_subscribe = False
        self.broken: BrokerError | None = None  # raised by publish and history when set
        self.handler: PublicationHandler | None = None

    async def start(self, on_publication: PublicationHandler) -> None:
        self.handler = on_publication
        await self.inner.start(on_publication)

    async def close(self) -> None:
        await self.inner.close()

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        if self.broken is not None:
            raise self.broken
        return await self.inner.publish(channel, data, key=key, info=info)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        self.history_entered.set()
        if self.broken is not None:
            raise self.broken
        if self.history_gate is not None:
            await self.history_gate.wait()
        return await self.inner.history(channel, since, limit)

    async def subscribe(self, channel: ChannelName) -> None:
        await asyncio.sleep(0)  # a real broker awaits a round trip here
        if self.fail_subscribe:
            raise ConnectionError("the broker is down")
        self.subscribes.append(channel)
        await self.inner.subscribe(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        self.unsubscribes.append(channel)
        await self.inner.unsubscribe(channel)

    async def is_ready(self) -> bool:
        return True


class RecordingPresence:
    """A ``LocalPresence`` that fails on demand; ``tell_presence`` plays a presence
    change made on another node."""

    def __init__(self) -> None:
        self.inner = LocalPresence()
        self.handler: PresenceHandler | None = None
        self.fail_changes = False  # join and leave raise when set
        self.broken: BrokerError | None = None  # raised by presence when set

    def listen(self, on_change: PresenceHandler) -> None:
        self.handler = on_change

    async def join(self, channel: ChannelName, client_id: str, user: str) -> None:
        if self.fail_changes:
            raise BrokerError("the broker is down")
        await self.inner.join(channel, client_id, user)

    async def leave(self, channel: ChannelName, client_id: str) -> None:
        if self.fail_changes:
            raise BrokerError("the broker is down")
        await self.inner.leave(channel, client_id)

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        if self.broken is not None:
            raise self.broken
        return await self.inner.presence(channel)

    def tell_presence(self, change: PresenceChange) -> None:
        """Hand the hub ``change`` as if another node had made it."""
        assert self.handler is not None, "listened to"
        self.handler(change)


class RecordingOutbound:
    """A connection's ``Outbound`` that keeps every chunk put and sends nothing until the
    test says so: ``pending_bytes`` grows with each ``put`` until ``take_all``. A reader
    held in ``wait_sent`` sets ``held``; ``changed`` is set by every put and hold."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.finished: tuple[int, str] | None = None
        self.held = asyncio.Event()
        self.changed = asyncio.Event()
        self._pending = 0
        self._taken = asyncio.Event()
        self._ended = asyncio.Event()

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def put(self, chunk: str) -> None:
        if self.finished is None:
            self.chunks.append(chunk)
            self._pending += len(chunk)
            self.changed.set()

    def discard_pending(self) -> None:
        self._pending = 0

    def finish(self, goodbye: str, code: int, reason: str) -> None:
        if self.finished is None:
            self.put(goodbye)
            self.finished = (code, reason)
            self._ended.set()
            self._taken.set()

    def end_silently(self) -> None:
        self._ended.set()

    async def wait_sent(self) -> None:
        self.held.set()
        self.changed.set()
        while self._pending and self.finished is None:
            self._taken.clear()
            await self._taken.wait()

    def take_all(self) -> None:
        """Play the client reading everything: nothing is pending any more."""
        self._pending = 0
        self.held.clear()
        self._taken.set()

    async def run(self) -> None:
        await self._ended.wait()

    async def stop(self, *, client_left: bool) -> None:
        self._ended.set()
