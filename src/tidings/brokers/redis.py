"""The pub/sub broker: many stateless nodes share channels through Redis (or Redis Cluster).

Network I/O with ``redis.asyncio``. Redis is the truth: each publish is made by a Lua
script (``redis_scripts.PUBLISH``, run with EVALSHA, falling back to EVAL when Redis
forgot it) that checks the idempotency key, takes the channel's next offset, appends the
publication to the channel's history stream and PUBLISHes it to the channel's topic, as
one atomic step. So publishers on any number of nodes yield one gap-free order, and the
order on the topic is the offset order. Publishes started in the same event-loop turn
share one pipeline and one script call (``redis_runner``: auto-batching; ``batch = false``
turns it off). Every node subscribed to the channel gets one
Redis message per publication, however many local subscribers it fans it out to.

Choices, and why:

* **Timestamps** come from the publishing node's clock (``clock``), not Redis ``TIME``:
  the clock is injectable (tests move it), and history ttl and the dedupe window are
  judged with the same clock the timestamps came from. Nodes' clocks should be in sync
  (NTP); a skew only moves the edge of the ttl and dedupe windows by that skew.
* **The head** (epoch and last offset) **never expires** once published to. A head that
  vanished would be safe (the next publish starts a new epoch; see below) but would
  throw every resuming client of an idle channel into a gap. It is one small hash per
  channel; run Redis with ``maxmemory-policy allkeys-lru`` to bound it: an evicted head
  is a new epoch for that channel, never a repeated offset. A head made by a *reader*
  of a channel never published to (so that its ``(epoch, 0)`` stays valid) expires
  after the namespace's history ttl unless published to.
* **History** is a stream trimmed to the namespace's history size (exact ``MAXLEN``)
  whose ttl is renewed on each publish, so Redis drops an idle channel's history once
  all of it is older than the ttl. Reads also drop, by timestamp, entries older than
  the ttl, as the memory broker does. A reader after an evicted position gets ``Gap``.
* **Idempotency keys** live in a hash (key -> offset) and a sorted set (key by time)
  that the script trims to the dedupe window and its maximum count.

Lost data. If Redis loses a channel (restart without persistence, FLUSHALL, eviction of
its head), the next script to touch it finds no head and starts a new epoch from a
candidate the caller drew (``epoch_factory``), deleting any stream left over, so offsets
restart at 1 under an epoch no client holds: resuming clients are told ``Gap``.

Rollbacks: Redis back *older* than it was (restarted from an RDB or an AOF ``everysec``
after a power cut, a replica promoted before it had the last writes), whatever the
length of the rollback. Which channels rolled back, and how far, no node can know: a
node knows only the channels it touched, and the publications of the others may have
been given out by any node. So the decision is Redis's own, in every script: each head
records the ``run_id`` of the Redis process that wrote it, and a process finding a head
of another process moves that channel to a new epoch first (``redis_scripts``: same
offsets and history, renamed). No position is given out twice, and the clients of the
channel are told: this node sees publications of the new epoch, which the hub reports
as a gap (4504, then ``recovered: false``). The price: after *any* restart or failover
of Redis (or a slot migration in a cluster), resuming clients of the channels touched
since are told ``recovered: false``, even when nothing was lost; history stays readable.
A deployment whose Redis never comes back older (AOF ``appendfsync always``, and no
failover to a replica that may lag) may say so with ``?trust_restarts=yes`` on every
node's URL (or ``trust_restarts = true`` in ``[brokers.redis]``): the heads are then
stamped alike by every process, and a restart keeps the epochs.

Two ideas were rejected as unsound: a node remembering each channel's highest position
catches only the channels it touched (another node's publishes at reused positions go
through, and this node then drops them as repeats); a node checking Redis's ``run_id``
when it notices a reconnect misses the publishes it sends, on connections it opened to
the new process, before it noticed. Hence the ``run_id`` learnt per connection, as it
opens, and carried by every script sent on it (``redis_runner``). A rollback
that keeps the Redis process (``DEBUG RELOAD``) keeps its ``run_id``: the publish script
catches it for the channels this node is subscribed to (its last position is a floor),
and syncing catches it when a node's last offset is past the head
(``redis_channels``, ``RESET``).

Subscriptions and delivery (``redis_channels``, whose theory of operation says how):
each subscribed channel's live publications are handed on in offset order, and what was
missed is read from history. A lost link (EOF, error, no answer to a PING within
``redis_link.PING_INTERVAL_S``) starts the recovery: reconnect with exponential backoff
and full jitter, resubscribe every channel, and sync each one. ``is_ready`` is false
from the loss until every channel is resubscribed.

Readiness and time-outs: a lost link is noticed late on a silent network (a PING
unanswered for ``redis_link.PING_INTERVAL_S``), so readiness is an active probe as well:
a PING on a command connection every ``probe_interval_s`` and on each ``is_ready``,
failing after ``probe_timeout_s``. While the last probe went unanswered Redis is
*unresponsive*: ``is_ready`` is false and every script fails at once with
``BrokerUnavailable``, unsent. A publish waits at most ``publish_timeout_s`` for its
answer; given up on before the runner wrote it to Redis it is dropped, never sent
(``BrokerUnavailable``); after, it may still run when Redis reads it (``BrokerError``
saying so).

Presence (``redis_presence``): a hash per channel, refreshed by each node on one timer;
join and leave frames travel on the channel's topic and are told apart from
publications by how they start.

Node commands (``node_commands``): one control topic, subscribed on the same link as
the channels (on its shard's link in a cluster) from start on, and again after every
recovery before the broker is ready.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
from collections.abc import Callable, Mapping
from typing import Final

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from tidings.brokers.base import (
    HistoryRead,
    NodeCommand,
    NodeCommandHandler,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.node_commands import NodeCommands, control_topic
from tidings.brokers.redis_channels import RedisChannels
from tidings.brokers.redis_link import REDIS_ERRORS, PubSubLink, PubSubLinks
from tidings.brokers.redis_presence import (
    PRESENCE_LIFETIME_S,
    PRESENCE_REFRESH_S,
    RedisPresence,
)
from tidings.brokers.redis_probe import RedisProbe
from tidings.brokers.redis_scripts import topic_of
from tidings.brokers.redis_store import RedisStore
from tidings.brokers.redis_target import RedisTarget, make_client, without_credentials
from tidings.clock import Clock, SystemClock
from tidings.core.backoff import Backoff
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position
from tidings.errors import BrokerError, BrokerUnavailable

# RedisTarget is redis_target's, offered here too: callers read broker URLs with it.
__all__ = ["RedisBroker", "RedisTarget"]

logger = logging.getLogger(__name__)

PROBE_INTERVAL_S: Final = 1.0
PROBE_TIMEOUT_S: Final = 1.0
PUBLISH_TIMEOUT_S: Final = 1.5
RECONNECT_BASE_DELAY_S: Final = 0.05
RECONNECT_MAX_DELAY_S: Final = 2.0


# -- the broker ----------------------------------------------------------------------------


class RedisBroker:
    """A broker shared by many nodes through Redis; see the module docstring.

    Attributes:
        pubsub_client_name: the ``CLIENT SETNAME`` of this broker's pub/sub
            connections (to find them in ``CLIENT LIST``).
    """

    def __init__(
        self,
        url: str,
        namespaces: Namespaces,
        *,
        clock: Clock | None = None,
        dedupe: DedupeOptions | None = None,
        epoch_factory: Callable[[], str] | None = None,
        reconnect_max_delay_s: float = RECONNECT_MAX_DELAY_S,
        presence_lifetime_s: float = PRESENCE_LIFETIME_S,
        presence_refresh_s: float = PRESENCE_REFRESH_S,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        node_id: str | None = None,
        options: Mapping[str, object] | None = None,
    ) -> None:
        """Prepare a broker for ``url``; nothing connects before ``start``.

        ``options`` is the ``[brokers.redis]`` table of the configuration file
        (``prefix``, ``trust_restarts``); the URL's query parameters win over it.

        ``node_id`` names this node in presence entries and node commands (random if
        not given); every node sharing the Redis must have its own. ``epoch_factory``
        draws the epoch of a channel Redis lost (``redis_store.EpochCandidates`` if not
        given).

        A client's presence entry outlives its node by at most ``presence_lifetime_s``;
        each node renews its entries every ``presence_refresh_s``. Redis is PINGed
        every ``probe_interval_s`` (and on each ``is_ready``); without an answer within
        ``probe_timeout_s`` it is *unresponsive* until one comes. A publish gets no
        longer than ``publish_timeout_s`` for its answer (see "Readiness and time-outs").

        Raises:
            ConfigError: the URL or ``options`` is not one this broker reads, or the
                presence refresh is not shorter than the lifetime.
        """
        self._target = RedisTarget.parse(url, options)
        self._display_url = without_credentials(url)
        self._clock = clock or SystemClock()
        self._reconnect_max_delay_s = reconnect_max_delay_s
        self.node_id = node_id or secrets.token_hex(8)
        self.pubsub_client_name = f"tidings-pubsub-{self.node_id}"
        self._client: Redis | RedisCluster | None = None
        self._db = 0
        self._healthy = False
        self._closed = False
        self._probe = RedisProbe(
            self._display_url, interval_s=probe_interval_s, timeout_s=probe_timeout_s
        )
        self._store = RedisStore(
            self._target,
            self._display_url,
            namespaces,
            clock=self._clock,
            dedupe=dedupe or DedupeOptions(),
            epoch_factory=epoch_factory,
            probe=self._probe,
            publish_timeout_s=publish_timeout_s,
        )
        self._presence = RedisPresence(
            self._target.prefix,
            self._clock,
            self._store.run_keys,
            self._topic_of,
            "SPUBLISH" if self._target.cluster else "PUBLISH",
            lifetime_s=presence_lifetime_s,
            refresh_s=presence_refresh_s,
            node=self.node_id,
        )
        self._control = NodeCommands(self.node_id)
        self._control_link: PubSubLink | None = None  # where Redis confirmed the control topic
        self._links = PubSubLinks(
            self.pubsub_client_name,
            self._display_url,
            on_message=self._on_message,
            on_lost=self._link_lost,
        )
        self._channels = RedisChannels(
            link_for=self._link_for,
            read_history=self._store.history,
            reset=self._store.reset,
            on_presence=self._presence.receive,
            is_reachable=lambda: self._healthy and not self._closed,
            backoff=self._backoff,
        )
        self._recovery: asyncio.Task[None] | None = None
        self._recovery_needed = False
        self._publish_timeout_s = publish_timeout_s

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, on_publication: PublicationHandler) -> None:
        """Connect and start delivering publications of subscribed channels, and presence
        changes of other nodes (to ``presence_store``'s listener), and refreshing this
        node's presence entries.

        If Redis cannot be reached now, the broker keeps trying in the background and
        is not ready until it succeeds.

        Raises:
            BrokerError: the broker was closed.
        """
        if self._closed:
            raise BrokerError("the Redis broker was closed; make a new one")
        self._channels.on_publication = on_publication
        if self._client is not None:
            return
        client, self._db = make_client(self._target)
        self._client = client
        self._store.start(client)
        self._presence.start()
        self._probe.start(client)
        try:
            await self._connect()
            await self._listen_for_commands()
        except (*REDIS_ERRORS, BrokerError) as exc:
            logger.warning(
                "Redis at %s is not reachable (%s); retrying in the background",
                self._display_url,
                exc,
            )
            self._start_recovery()
        else:
            self._healthy = True
            logger.info("Redis broker connected to %s", self._display_url)

    async def _connect(self, *, refresh: bool = False) -> None:
        """Find the servers: the topology of a cluster (read again with ``refresh``),
        the pub/sub link of one Redis."""
        client = self._client
        if isinstance(client, RedisCluster):
            await client.initialize()
            if refresh:
                await client.nodes_manager.initialize()
        else:
            await self._link_for("")

    async def close(self) -> None:
        """Stop delivering and close every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._healthy = False
        await self._store.close()
        await self._presence.close()
        await self._probe.close()
        if self._recovery is not None:
            self._recovery.cancel()
            await asyncio.gather(self._recovery, return_exceptions=True)
        await self._channels.close()
        await self._links.close()
        if self._client is not None:
            await self._client.aclose()
        logger.info("Redis broker closed")

    async def is_ready(self) -> bool:
        """Whether Redis answers a PING now, within the probe time-out (so this returns
        within it), and every subscribed channel is subscribed there."""
        if self._closed or not self._healthy or self._client is None:
            return False
        return await self._probe.probe()

    # -- publishing and history (``redis_store``) ----------------------------------------

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish ``data`` in ``channel`` with one atomic script (see the module docstring).

        Raises:
            BrokerError: Redis failed or is unreachable; the publication may or may not
                have been made (retry with the same ``key``).
        """
        topic = self._topic_of(channel)
        # A head behind what this node delivered was rolled back in place: the script
        # moves it to a new epoch (see redis_scripts).
        floor = self._channels.last_of(topic)
        return await self._store.publish(channel, topic, data, key=key, info=info, floor=floor)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``) with one script.

        Raises:
            BrokerError: Redis failed or is unreachable.
        """
        return await self._store.history(channel, since, limit)

    # -- presence ----------------------------------------------------------------------------

    @property
    def presence_store(self) -> RedisPresence:
        """Presence shared by every node on this Redis (``HasPresenceStore``)."""
        return self._presence

    # -- node commands (``NodeControl``, ``node_commands``) ---------------------------------

    @property
    def _control_topic(self) -> str:
        return control_topic(self._target.prefix, self._db)

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand node commands, this node's and others', to ``on_command``
        (``NodeControl.listen``)."""
        self._control.listen(on_command)

    async def send_to_nodes(self, command: NodeCommand) -> int:
        """Handle ``command`` here, then publish it to the other nodes
        (``NodeControl.send_to_nodes``).

        Returns:
            1 (this node) plus the other nodes subscribed to the control topic, as
            Redis counted them when it published.

        Raises:
            BrokerError: Redis failed or is unreachable; only this node handled it.
        """
        self._control.handle(command)
        client = self._client
        what = "telling the other nodes"
        if self._closed or client is None:
            raise BrokerUnavailable(f"{what} failed: the Redis broker is not started")
        if not self._probe.responsive:
            raise BrokerUnavailable(
                f"{what} failed: Redis at {self._display_url} did not answer a PING within "
                f"{self._probe.timeout_s:g} s; nothing was sent"
            )
        payload = self._control.encode(command)
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                if self._target.cluster:
                    receivers = await client.spublish(self._control_topic, payload)
                else:
                    receivers = await client.publish(self._control_topic, payload)
        except (*REDIS_ERRORS, TimeoutError) as exc:
            raise BrokerError(f"{what} failed: {exc!r}") from exc
        link = self._control_link
        own = 1 if link is not None and link.is_open else 0  # Redis counted this node too
        return 1 + max(0, int(receivers) - own)

    async def _listen_for_commands(self) -> None:
        """Subscribe the control topic, unless its link still holds it.

        Raises:
            RedisError, OSError, BrokerError: Redis failed; the recovery tries again.
        """
        held = self._control_link
        if held is not None and held.is_open:
            return
        topic = self._control_topic
        link = await self._link_for(topic)

        def confirmed() -> None:
            self._control_link = link

        await link.request("subscribe", topic, confirmed)

    # -- subscriptions (``redis_channels``) ----------------------------------------------

    async def subscribe(self, channel: ChannelName) -> None:
        """Deliver ``channel``'s publications to this node; returns once Redis confirmed.

        Raises:
            BrokerError: Redis is unreachable now (the broker is reconnecting).
        """
        await self._channels.subscribe(channel, self._topic_of(channel))

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications to this node; returns once Redis
        confirmed. Publications made before the call are still delivered (those Redis
        sent before its confirmation); none made after it returns."""
        await self._channels.unsubscribe(channel, self._topic_of(channel))

    def _topic_of(self, channel: ChannelName) -> str:
        return topic_of(self._target.prefix, self._db, channel)

    async def _link_for(self, topic: str) -> PubSubLink:
        """Return the open link to the server holding ``topic``, opening it if needed."""
        client = self._client
        assert client is not None, "started"
        return await self._links.for_topic(client, topic)

    def _on_message(self, link: PubSubLink, topic: str, payload: bytes) -> None:
        if self._channels.receive(link, topic, payload):
            return
        if link is self._control_link and topic == self._control_topic:
            self._control.receive(payload)

    # -- recovery ------------------------------------------------------------------------

    def _link_lost(self, link: PubSubLink, reason: str) -> None:
        if self._closed or not self._links.forget(link):
            return
        logger.warning("lost the Redis pub/sub connection to %s: %s", link.name, reason)
        self._channels.mark_lost(link)
        self._healthy = False
        self._start_recovery()

    def _backoff(self) -> Backoff:
        """Delays between retries of a reconnect or a sync: exponential, full jitter, so
        the nodes of a restarted Redis spread their retries."""
        return Backoff(
            base_s=RECONNECT_BASE_DELAY_S,
            cap_s=self._reconnect_max_delay_s,
            uniform=random.uniform,
        )

    def _start_recovery(self) -> None:
        self._recovery_needed = True
        if self._recovery is None and not self._closed:
            self._recovery = asyncio.get_running_loop().create_task(
                self._recover(), name="tidings redis recovery"
            )

    async def _recover(self) -> None:
        delay = self._backoff()
        try:
            while not self._closed:
                self._recovery_needed = False
                try:
                    count = await self._resubscribe()
                except Exception as exc:  # the task boundary: whatever failed, try again
                    self._recovery_needed = True
                    wait_s = delay.next_delay_s()
                    expected = isinstance(exc, (*REDIS_ERRORS, BrokerError))
                    logger.log(
                        logging.WARNING if expected else logging.ERROR,
                        "reconnecting to Redis at %s failed (%s); next try in %.2f s",
                        self._display_url,
                        exc,
                        wait_s,
                        exc_info=not expected,
                    )
                    await asyncio.sleep(wait_s)
                    continue
                if not self._recovery_needed:
                    self._healthy = True
                    self._presence.restore_on_next_refresh()  # Redis may have lost them
                    logger.info(
                        "reconnected to Redis at %s; resubscribed %d channels",
                        self._display_url,
                        count,
                    )
                    return
        finally:
            self._recovery = None

    async def _resubscribe(self) -> int:
        """Reconnect, resubscribe every channel whose link was lost, then sync them."""
        await self._connect(refresh=True)
        await self._listen_for_commands()
        return await self._channels.resubscribe()
