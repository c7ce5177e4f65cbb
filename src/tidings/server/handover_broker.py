"""The broker of a ring node in etcd: its local store (memory, sqlite) behind the roles of
a transition (``core.handover.publishing_role``; docs/modes/hashing.md, "Scaling without
loss"). asyncio; HTTP to other nodes through ``server.forwarding.OwnerLink``.

Every publication made on this node, whatever door it came in by (the server API, a
WebSocket ``publish``, a source, the embedding process), reaches the hub's broker, so
the role is applied here, once:

* ``Sequence()``: the store sequences it.
* ``Sequence(copy_to=R)``: the store sequences it, and the hand-over (``server.handover``)
  is told the channel has a new publication for R. While it is being sequenced it is
  counted *in flight*: sealing waits for those, so none is sequenced after the giver's
  top was taken as final.
* ``Hold()``: this node sealed; the publication waits for the next ring (bounded by
  ``handover_timeout``), then is judged again (the final ring forwards it to the new
  owner).
* ``ForwardTo(node)``: it is published on that node (the sequencer) as a signed
  ``POST /api/publish`` carrying this node's ring version; refused there as made with
  another ring (``stale_ring``), this node reads the ring again and judges again.

Everything else (history, subscriptions, readiness) is the store's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Final, Protocol

import msgspec

from tidings.brokers.base import HistoryRead, PublicationHandler, PublishResult, RingStore
from tidings.core.channel import ChannelName
from tidings.core.dedupe import RememberedKey
from tidings.core.handover import ForwardTo, Hold, ResumeStep, decide_resume
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.routing import FollowingPlacement
from tidings.core.wire import InfoFrame
from tidings.errors import Unavailable
from tidings.server.forwarding import OwnerLink, Parts, is_stale_ring

logger = logging.getLogger(__name__)

PUBLISH_PATH = "/api/publish"


# How long a resuming subscriber ahead of this node's replica waits for the hand-over
# stream (bounded by ``handover_timeout`` too): a stream message is a round trip away.
RESUME_WAIT_S: Final = 5.0


class _ForwardedPublish(msgspec.Struct, frozen=True, omit_defaults=True):
    channel: str
    data: msgspec.Raw
    key: str | None = None
    info: InfoFrame | None = None


class _Published(msgspec.Struct, frozen=True):
    epoch: str
    offset: int
    duplicate: bool = False


class HandoverListener(Protocol):
    """What the broker tells the node's hand-over (``server.handover.Handover``)."""

    def published(self, channel: ChannelName, receiver: str) -> None:
        """A publication of ``channel``, which this node gives to ``receiver``, was
        sequenced: send it on."""
        ...

    async def wait_ring_after(self, version: int, timeout_s: float) -> bool:
        """Wait until a ring newer than ``version`` is known; whether it came in time."""
        ...

    async def refresh(self) -> None:
        """Read the ring in etcd again."""
        ...

    async def sequencing_ready(self) -> None:
        """Wait until this node may sequence under the ring it knows."""
        ...


class HandoverBroker:
    """A ring node's broker: ``store`` under the transition's roles; see the module
    docstring."""

    def __init__(
        self,
        store: RingStore,
        placement: FollowingPlacement,
        link: Callable[[], OwnerLink],
        *,
        timeout_s: float,
    ) -> None:
        """Sequence in ``store`` as ``placement`` says; forward through ``link()`` (the
        node's, made after the broker); hold for ``timeout_s`` at most."""
        self.store = store
        self._placement = placement
        self._link = link
        self._timeout_s = timeout_s
        self._listener: HandoverListener | None = None
        self._in_flight: dict[ChannelName, int] = {}
        self._settled = asyncio.Event()
        self._settled.set()
        self._adopted = asyncio.Event()  # set (and replaced) at each adoption

    def listen(self, listener: HandoverListener) -> None:
        """Tell ``listener`` of the publications to copy, and wait on it for rings."""
        self._listener = listener

    # -- the roles ---------------------------------------------------------------------

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish ``data`` in ``channel`` by this node's role (see the module docstring).

        Raises:
            Unavailable: held past ``handover_timeout``, or the sequencer could not be
                reached or kept refusing this node's ring.
            BrokerError: the store failed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        while True:
            role = self._placement.publishing_role(channel)
            version = self._placement.ring_version
            if isinstance(role, Hold):
                if not await self._wait_ring(version, deadline - loop.time()):
                    raise Unavailable(
                        f"{channel} is being handed over and the ring did not become final "
                        "in time; not published; retry with the same key"
                    )
                continue
            if isinstance(role, ForwardTo):
                result = await self._forward(role.node, channel, (data, key, info), version)
                if result is not None:
                    return result
                if loop.time() >= deadline:
                    raise Unavailable(f"the sequencer of {channel} kept refusing this node's ring")
                listener = self._listener
                if listener is not None:
                    await listener.refresh()
                if self._placement.ring_version == version:
                    await asyncio.sleep(0.05)  # the sequencer knows a ring this one will learn
                continue
            if self._listener is not None:
                await self._listener.sequencing_ready()
                if self._placement.ring_version != version:
                    continue  # a newer ring came meanwhile: judge again
            if role.copy_to is None:
                return await self.store.publish(channel, data, key=key, info=info)
            with self._sequencing(channel):
                result = await self.store.publish(channel, data, key=key, info=info)
                if not result.duplicate and self._listener is not None:
                    self._listener.published(channel, role.copy_to)
            return result

    @contextlib.contextmanager
    def _sequencing(self, channel: ChannelName) -> Iterator[None]:
        self._in_flight[channel] = self._in_flight.get(channel, 0) + 1
        self._settled.clear()
        try:
            yield
        finally:
            left = self._in_flight[channel] - 1
            if left:
                self._in_flight[channel] = left
            else:
                del self._in_flight[channel]
            if not self._in_flight:
                self._settled.set()

    async def wait_sequenced(self) -> None:
        """Wait until no publication copied to a receiver is being sequenced (sealing:
        none passed the role check before the seal and is still to come)."""
        await self._settled.wait()

    async def _wait_ring(self, version: int, timeout_s: float) -> bool:
        listener = self._listener
        if listener is None or timeout_s <= 0:
            return False
        return await listener.wait_ring_after(version, timeout_s)

    async def _forward(
        self,
        node: str,
        channel: ChannelName,
        publication: tuple[bytes, str | None, ClientInfo | None],
        version: int,
    ) -> PublishResult | None:
        """Publish ``publication`` (data, key, info) on ``node``; ``None`` if it refused
        this node's ring."""
        data, key, info = publication
        body = _ForwardedPublish(
            channel,
            msgspec.Raw(data),
            key,
            None if info is None else InfoFrame(info.client, info.user),
        )
        raw = msgspec.json.encode(body)
        url = self._placement.url_of(node)
        parts: Parts = await self._link().send(channel, url, ("POST", PUBLISH_PATH, raw), version)
        if is_stale_ring(parts):
            return None
        status, _, answer = parts
        if status != 200:
            text = answer[:200].decode(errors="replace")
            raise Unavailable(f"the sequencer of {channel} answered {status}: {text}")
        published = msgspec.json.decode(answer, type=_Published)
        return PublishResult(Position(published.epoch, published.offset), published.duplicate)

    # -- the store's ------------------------------------------------------------------

    async def start(self, on_publication: PublicationHandler) -> None:
        """Start the store."""
        await self.store.start(on_publication)

    async def close(self) -> None:
        """Close the store."""
        await self.store.close()

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read the store's history of ``channel``.

        A subscriber moved here from the old owner may hold publications the hand-over
        stream has not brought to this replica yet: its position is ahead of the
        replica's head in the same epoch (``core.handover.decide_resume``). Nothing is
        lost, the stream is on its way: wait for it (``RESUME_WAIT_S`` at most) rather
        than answer ``recovered: false``; if it has not come by then (the giver's
        messages are being lost and resent), refuse: the client retries with its
        position, and hears ``recovered: false`` only if the giver crashed (its channels
        then restart in a new epoch).

        Raises:
            Unavailable: the replica did not reach the subscriber's position in time.
        """
        read = await self.store.history(channel, since, limit)
        if since is None or not self._placement.serves_replica(channel):
            return read
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(RESUME_WAIT_S, self._timeout_s)
        while decide_resume(read.head, since, replica=True) is ResumeStep.WAIT:
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                break
            adopted = self._adopted
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining_s):
                    await adopted.wait()
            read = await self.store.history(channel, since, limit)
        still_replica = self._placement.serves_replica(channel)
        if still_replica and decide_resume(read.head, since, replica=True) is ResumeStep.WAIT:
            raise Unavailable(
                f"this node's copy of {channel} has not reached your position yet "
                "(it is being handed over); retry shortly"
            )
        return read

    async def subscribe(self, channel: ChannelName) -> None:
        """Deliver ``channel``'s publications (the store's, adopted ones too)."""
        await self.store.subscribe(channel)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications."""
        await self.store.unsubscribe(channel)

    async def is_ready(self) -> bool:
        """Whether the store is."""
        return await self.store.is_ready()

    async def held_channels(self) -> list[ChannelName]:
        """The store's held channels."""
        return await self.store.held_channels()

    async def remembered_keys(self, channel: ChannelName) -> tuple[RememberedKey, ...]:
        """The store's keys of ``channel`` inside the dedupe window."""
        return await self.store.remembered_keys(channel)

    async def adopt(
        self,
        channel: ChannelName,
        epoch: str,
        publications: Sequence[Publication],
        *,
        top: int,
        keys: Sequence[RememberedKey] = (),
    ) -> Position:
        """Adopt into the store (``AdoptingStore.adopt``)."""
        try:
            return await self.store.adopt(channel, epoch, publications, top=top, keys=keys)
        finally:
            adopted, self._adopted = self._adopted, asyncio.Event()
            adopted.set()  # resumes waiting for the stream look again
