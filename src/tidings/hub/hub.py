"""The hub: local subscriptions, subscribe-with-recovery, and fan-out. Awaits the broker.

Theory of operation
-------------------
A node subscribes a channel at its broker while it has at least one local subscriber
(``_reconcile``, serialised per channel by a ``_BrokerLink`` lock so a subscribe and an
unsubscribe of one channel never cross at the broker).

Subscribing a client must lose nothing and repeat nothing between "what history
says" and "what arrives live". The race: a publication made while the history read
is in flight is either in the read, or arrives live, or both. So:

1. the subscription is registered *pending*: live publications queue on it;
2. the node's broker subscription is made (or found) — from here on nothing is missed;
3. history is read after the client's position;
4. queued publications are merged after the history by offset (those at or below the
   last offset read are dropped: they were in the read), and the subscription goes
   live in the same synchronous step that returns the result.

The caller must write the result to its connection before its next ``await``: then
no live publication can be written between the result and the publications it
already holds. In fan-out, a live subscription also drops any offset at or below the
one it has (a broker redelivery), so a connection never sees an offset twice.

A live publication that does not follow the subscription's position (a skipped
offset, another epoch: the broker lost publications it could not refill; the rule is
``core.catchup``'s) is not delivered as if it followed: the subscriber is told to
``report_gap``, and its client resumes from its position and hears ``recovered: false``.
A broker that learns of such a loss between publications (``ReportsGaps``: a relay whose
upstream could not recover a channel after a cut) tells the hub at once, and every live
subscriber of the channel is told to resume then.

Fan-out encodes a publication once per wire format (``EncodedPublication``) and hands
the same object to every subscriber; a failing subscriber is logged, counted and
skipped, and the others still receive the publication. With a ``ChannelHeat``, each
publication is then counted (or, if it made few deliveries on a busy node, sampled) with
its number of deliveries (hot channels): inline, nothing per subscriber.

In the consistent-hashing mode a node may sequence a channel only while it can prove it
owns it (``server.ring_fence``): ``fence``, if given, is asked before every publish
and refuses it (``Unavailable``) before the broker sees it; nothing else here changes.

Presence, where the namespace enables it, is kept by a ``PresenceStore`` apart from the
broker (the broker's own, ``presence_store_of``, unless one is given): a subscribe joins
the client in the store before going live (the result must still be the next write, so
the join cannot come after it) and announces the join to this node's other
subscribers; an unsubscribe announces the leave and then leaves in the store. The store
lists clients of every node and hands the hub only the changes other nodes made, which
it announces the same way; so each change is announced once on every node. A client is
never told of itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from tidings.brokers.base import (
    Broker,
    HistoryRead,
    PresenceChange,
    PresenceStore,
    PublishResult,
    ReportsGaps,
)
from tidings.brokers.memory import presence_store_of
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.channel import ChannelName
from tidings.core.channel_heat import ChannelHeat
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Replay
from tidings.core.wire import EncodedPublication
from tidings.errors import BrokerError, BrokerUnavailable, Unavailable
from tidings.hub.registry import PresenceEvent, Subscriber, Subscription, SubscriptionRegistry

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """What a subscribing client is told: the position it now holds, whether its
    ``since`` was fully recovered, and the publications it missed (oldest first)."""

    position: Position
    recovered: bool
    publications: tuple[Publication, ...]


@contextlib.contextmanager
def _broker_failures_unavailable() -> Iterator[None]:
    """Turn a broker (or presence store) failure into the ``unavailable`` a client can act
    on (retry later)."""
    try:
        yield
    except BrokerError as exc:
        logger.warning("broker failure: %s", exc)
        raise Unavailable("the broker is unavailable; retry shortly") from exc


class _BrokerLink:
    """Whether this node is subscribed to one channel at the broker."""

    __slots__ = ("lock", "subscribed", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.subscribed = False
        self.users = 0


class Hub:
    """One per process: see the module docstring."""

    def __init__(
        self,
        broker: Broker,
        presence: PresenceStore | None = None,
        *,
        heat: ChannelHeat | None = None,
        fence: Callable[[ChannelName], None] | None = None,
    ) -> None:
        """Make the hub of ``broker``; ``presence`` as the module docstring says; ``heat``
        counts publications and deliveries by channel (hot channels), if given;
        ``fence`` raises ``Unavailable`` for a channel this node may not sequence now."""
        self.broker = broker
        self.heat = heat
        self._fence = fence
        self.presence_store = presence if presence is not None else presence_store_of(broker)
        self._registry = SubscriptionRegistry()
        self._links: dict[ChannelName, _BrokerLink] = {}
        self.deliveries = 0
        self.delivery_failures = 0

    async def start(self) -> None:
        """Start the broker, delivering its publications and remote presence changes here."""
        self.presence_store.listen(self._announce_remote)
        if isinstance(self.broker, ReportsGaps):
            self.broker.listen_gaps(self._lose_continuity)
        await self.broker.start(self._fan_out)

    async def close(self) -> None:
        """Close the broker."""
        await self.broker.close()

    # -- publishing --------------------------------------------------------------------

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish through the broker; local subscribers receive it through fan-out.

        Raises:
            Unavailable: the broker failed, or the fence refused (not published). Its
                message says whether the publication may have been made (retry with
                the same key) or surely was not.
        """
        if self._fence is not None:
            self._fence(channel)
        try:
            return await self.broker.publish(channel, data, key=key, info=info)
        except BrokerUnavailable as exc:
            # The broker logged the outage once; each refusal is routine meanwhile.
            logger.debug("publish refused, the broker is unavailable: %s", exc)
            raise Unavailable("the broker is unavailable; not published; retry shortly") from exc
        except BrokerError as exc:
            # The broker may have made it and failed to answer: the client must not
            # take the 503 for "not published" (docs/protocol.md §2.4: a retry with the same
            # key is answered with the original position if it was).
            logger.warning("broker failure while publishing: %s", exc)
            raise Unavailable(
                "the broker did not confirm the publication: it may have been published; "
                "retry with the same key"
            ) from exc

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read a channel's history through the broker.

        Raises:
            Unavailable: the broker failed.
        """
        with _broker_failures_unavailable():
            return await self.broker.history(channel, since, limit)

    # -- subscriptions -----------------------------------------------------------------

    async def subscribe(
        self,
        channel: ChannelName,
        subscriber: Subscriber,
        since: Position | None = None,
        *,
        presence: bool = False,
    ) -> SubscribeResult | None:
        """Subscribe ``subscriber`` to ``channel``, recovering from ``since``.

        Returns:
            The result to write to the client before the next ``await`` (see the
            module docstring), or ``None`` if ``subscriber`` already holds ``channel``.

        Raises:
            Unavailable: the broker failed; nothing stays subscribed.
        """
        subscription = self._registry.add(channel, subscriber)
        if subscription is None:
            return None
        joined = False
        try:
            with _broker_failures_unavailable():
                await self._reconcile(channel)
                read = await self.broker.history(channel, since)
                if presence:
                    joined = True  # from the call on: it may be listed, even if it fails
                    await self.presence_store.join(channel, subscriber.client_id, subscriber.user)
            result = self._go_live(subscription, since, read)
        except BaseException:
            self._registry.remove(channel, subscriber)
            if joined:
                await self._leave_presence(channel, subscriber)
            await self._reconcile(channel)
            raise
        if presence:
            self._announce(PresenceEvent("join", channel, subscriber.client_id, subscriber.user))
        return result

    def _go_live(
        self, subscription: Subscription, since: Position | None, read: HistoryRead
    ) -> SubscribeResult:
        recovery = read.recovery
        recovered = since is not None and isinstance(recovery, Replay)
        publications = (
            list(recovery.publications) if isinstance(recovery, Replay) and recovered else []
        )
        held = publications[-1].position if publications else read.head
        if since is not None and not recovered:
            logger.debug("gap on %s after %s: %s", subscription.channel, since, recovery)
        for publication in subscription.pending or ():
            outcome = decide_catch_up(held, publication.position)
            if outcome is CatchUp.ALREADY_HAD or outcome is CatchUp.GAP:
                continue  # in the history read, or of an epoch other than the read's
            if outcome is CatchUp.HOLE:
                # The broker skipped offsets between the read and the live stream; the
                # client must not be handed a silent hole.
                recovered = False
                logger.warning(
                    "offsets %d..%d of %s missing between history and live",
                    held.offset + 1,
                    publication.offset - 1,
                    subscription.channel,
                )
            publications.append(publication)
            held = publication.position
        subscription.pending = None
        subscription.position = held
        return SubscribeResult(held, recovered, tuple(publications))

    async def unsubscribe(
        self, channel: ChannelName, subscriber: Subscriber, *, presence: bool = False
    ) -> bool:
        """Remove ``subscriber``'s subscription to ``channel``; whether it had one."""
        if self._registry.remove(channel, subscriber) is None:
            return False
        if presence:
            self._announce(PresenceEvent("leave", channel, subscriber.client_id, subscriber.user))
            await self._leave_presence(channel, subscriber)
        await self._reconcile(channel)
        return True

    async def _leave_presence(self, channel: ChannelName, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from the presence of ``channel``. A failure is
        only logged: the client is gone either way, and its entry, no longer renewed,
        expires."""
        try:
            await self.presence_store.leave(channel, subscriber.client_id)
        except BrokerError as exc:
            logger.warning(
                "%s left %s but the broker failed: %s", subscriber.client_id, channel, exc
            )

    async def _reconcile(self, channel: ChannelName) -> None:
        """Make the broker subscription of ``channel`` match whether it has local subscribers."""
        link = self._links.get(channel)
        wanted = self._registry.has_subscribers(channel)
        if link is not None and link.subscribed == wanted and not link.lock.locked():
            return  # the common case: nothing to change, nothing to await
        if link is None:
            if not wanted:
                return
            link = self._links[channel] = _BrokerLink()
        link.users += 1
        try:
            async with link.lock:
                wanted = self._registry.has_subscribers(channel)
                if wanted and not link.subscribed:
                    await self.broker.subscribe(channel)
                    link.subscribed = True
                elif not wanted and link.subscribed:
                    link.subscribed = False
                    await self.broker.unsubscribe(channel)
        finally:
            link.users -= 1
            if link.users == 0 and not link.subscribed:
                del self._links[channel]

    # -- fan-out -----------------------------------------------------------------------

    def _fan_out(self, publication: Publication) -> None:
        """Deliver a publication from the broker to every local subscriber of its channel."""
        subscriptions = self._registry.subscriptions(publication.channel)
        if not subscriptions:
            if self.heat is not None:
                self.heat.record(publication.channel, 0)  # rare: no local subscriber
            return
        encoded = EncodedPublication(publication)
        position = publication.position
        # Live subscriptions mostly hold the same Position object (the one the previous
        # fan-out gave them all), so the rule is decided once per distinct object, and
        # its outcome kept as two booleans (an enum member lookup costs ~0.1 µs on 3.11,
        # per subscriber).
        decided_for: Position | None = None
        redelivery = continuous = False
        delivered = 0
        # A snapshot: a delivery may close a slow consumer, which unsubscribes it.
        for subscription in list(subscriptions.values()):
            pending = subscription.pending
            if pending is not None:
                pending.append(publication)
                continue
            held = subscription.position
            if held is not decided_for:
                outcome = decide_catch_up(held, position)
                redelivery = outcome is CatchUp.ALREADY_HAD
                continuous = outcome is CatchUp.DELIVER
                decided_for = held
            if redelivery:
                continue  # never write an offset twice
            subscriber = subscription.subscriber
            subscription.position = position
            try:
                if continuous:
                    subscriber.deliver(encoded)
                else:
                    # Brokers fill their own gaps; one that could not (history shorter
                    # than an outage, data lost in the broker) must not become a silent
                    # hole: the client is made to resume and be told recovered: false.
                    logger.warning(
                        "%s lost continuity on %s at %s",
                        subscriber.client_id,
                        publication.channel,
                        publication.position,
                    )
                    subscriber.report_gap(publication.channel)
            except Exception:
                self.delivery_failures += 1
                logger.exception("delivery to %s failed", subscriber.client_id)
            else:
                delivered += 1
        self.deliveries += delivered
        heat = self.heat
        if heat is not None:
            # ChannelHeat.record inlined (core/channel_heat.py allows it): a method call
            # costs as much as a one-subscriber publication's countdown, the common case.
            if delivered >= heat.sampled_below:
                heat.exact.add(publication.channel, delivered)  # many deliveries: counted
            else:
                countdown = heat.countdown - 1
                if countdown:
                    heat.countdown = countdown  # not sampled: the cheap case
                else:
                    heat.sample(publication.channel, delivered)

    def _lose_continuity(self, channel: ChannelName) -> None:
        """The broker lost publications of ``channel`` after what it handed on: tell each
        live subscriber to resume now (it hears ``recovered: false``), instead of at the
        channel's next publication. A subscription still recovering reads history after
        the loss, which says so itself; one that read it before and is still joining
        presence is told at the next publication, as with any broker."""
        subscriptions = self._registry.subscriptions(channel)
        live = [s for s in (subscriptions or {}).values() if s.pending is None]
        if live:  # the broker warned of the loss itself
            logger.info("publications of %s were lost; %d subscribers resume", channel, len(live))
        for subscription in live:
            try:
                subscription.subscriber.report_gap(channel)
            except Exception:
                logger.exception("telling %s to resume failed", subscription.subscriber.client_id)

    def _announce_remote(self, change: PresenceChange) -> None:
        """Announce a join or leave made on another node to this node's subscribers."""
        self._announce(PresenceEvent(change.kind, change.channel, change.client, change.user))

    def _announce(self, event: PresenceEvent) -> None:
        subscriptions = self._registry.subscriptions(event.channel)
        for subscription in list((subscriptions or {}).values()):
            if subscription.subscriber.client_id == event.client:
                continue
            try:
                subscription.subscriber.deliver_presence(event)
            except Exception:
                logger.exception("presence to %s failed", subscription.subscriber.client_id)

    # -- introspection -----------------------------------------------------------------

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return ``{client_id: user}`` of the clients present in ``channel`` on every node.

        Raises:
            Unavailable: the broker failed.
        """
        with _broker_failures_unavailable():
            return await self.presence_store.presence(channel)

    def has_subscribers(self, channel: ChannelName) -> bool:
        """Whether any client of this node is subscribed to ``channel``."""
        return self._registry.has_subscribers(channel)

    def local_subscribers(self, channel: ChannelName) -> tuple[Subscriber, ...]:
        """Return this node's subscribers of ``channel`` (those still recovering too),
        in the order they subscribed; empty if it has none."""
        return tuple(self._registry.subscriptions(channel) or ())

    def channels(self, prefix: str = "") -> dict[ChannelName, int]:
        """Return this node's channels starting with ``prefix`` and their subscriber counts."""
        return {
            channel: count
            for channel, count in self._registry.counts()
            if channel.startswith(prefix)
        }
