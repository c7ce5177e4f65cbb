"""The pub/sub broker: many stateless nodes share channels through Redis (or Redis Cluster).

Network I/O with ``redis.asyncio``. Redis is the truth: each publish is one Lua script
(``redis_scripts.PUBLISH``, run with EVALSHA, falling back to EVAL when Redis forgot it)
that checks the idempotency key, takes the channel's next offset, appends the
publication to the channel's history stream and PUBLISHes it to the channel's topic, as
one atomic step. So publishers on any number of nodes yield one gap-free order, and the
order on the topic is the offset order. Every node subscribed to the channel gets one
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
node's URL: the heads are then stamped alike by every process, and a restart keeps the
epochs.

Two ideas were rejected as unsound: a node remembering each channel's highest position
catches only the channels it touched (another node's publishes at reused positions go
through, and this node then drops them as repeats); a node checking Redis's ``run_id``
when it notices a reconnect misses the publishes it sends, on connections it opened to
the new process, before it noticed. Hence the ``run_id`` learnt per connection, as it
opens, and carried by every script sent on it (``redis_scripts.ScriptRunner``). A rollback
that keeps the Redis process (``DEBUG RELOAD``) keeps its ``run_id``: the publish script
catches it for the channels this node is subscribed to (its last position is a floor),
and syncing catches it when a node's last offset is past the head (``_jump``, ``RESET``).

Theory of operation: subscriptions and delivery
-----------------------------------------------
Each subscribed channel has a ``_ChannelState``: its topic, the pub/sub link it is
subscribed on, whether Redis *confirmed* that subscription, and ``last``, the position
of the last publication handed to the hub.

* ``subscribe`` queues a SUBSCRIBE (SSUBSCRIBE in a cluster) on the link; the link's
  writer sends everything queued since its last write as one command (one per slot in
  a cluster, all in one write), so a reconnect storm of thousands of channels costs a
  handful of commands. ``subscribe`` returns only after Redis confirmed it and after
  reading the channel's head into ``last``: a publication made after it returns has a
  larger offset and arrives live; anything up to ``last`` is in history, which the hub
  reads next. Messages that reach the link before the confirmation belong to an
  earlier subscription and are dropped. ``unsubscribe`` likewise returns once Redis
  confirmed it, delivering until then what Redis sent before its confirmation: what
  was published before the call arrives, nothing published after it returns.
* A live publication is delivered if it is ``last``'s successor; at or below ``last``
  it is a repeat and dropped; past it (or in a new epoch, past offset 1) publications
  were missed: the channel starts *syncing*.
* Syncing: live publications queue in ``buffer`` while history after ``last`` is read
  and delivered, then the buffer is drained by the same rule (which may start another
  round). So the hub sees each offset once, in order, with no hole that history could
  fill. If the epoch changed, the new epoch's publications are delivered from offset
  1; if history no longer holds the missing ones, the node resumes from the oldest
  retained and logs it (the hub sees the skip).
* A lost link (EOF, error, no answer to a PING within ``PING_INTERVAL_S``) marks its
  channels unconfirmed and starts the recovery: reconnect with exponential backoff and
  full jitter, resubscribe every channel (buffering from then on), and sync each one.
  ``is_ready`` is false from the loss until every channel is resubscribed.

Readiness and time-outs: a lost link is noticed late on a silent network (a PING
unanswered for ``PING_INTERVAL_S``), so readiness is an active probe as well: a PING on
a command connection every ``probe_interval_s`` and on each ``is_ready``, failing after
``probe_timeout_s``. While the last probe went unanswered Redis is *unresponsive*:
``is_ready`` is false and every script fails at once with ``BrokerUnavailable``,
unsent. A publish waits at most ``publish_timeout_s`` for its answer; given up on
before the runner wrote it to Redis it is dropped, never sent (``BrokerUnavailable``);
after, it may still run when Redis reads it (``BrokerError`` saying so).

Presence (``redis_presence``): a hash per channel, refreshed by each node on one timer;
join and leave frames travel on the channel's topic and are told apart from
publications by how they start.

Node commands (``redis_control``): one control topic, subscribed on the same link as
the channels (on its shard's link in a cluster) from start on, and again after every
recovery before the broker is ready.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

from tidings.brokers.base import (
    HistoryRead,
    NodeCommand,
    NodeCommandHandler,
    PresenceHandler,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.memory import random_epoch
from tidings.brokers.redis_control import RedisNodeControl, control_topic
from tidings.brokers.redis_presence import (
    PRESENCE_LIFETIME_S,
    PRESENCE_REFRESH_S,
    RedisPresence,
    is_presence_frame,
)
from tidings.brokers.redis_scripts import (
    DEFAULT_PREFIX,
    PUBLISH,
    READ,
    RESET,
    ChannelKeys,
    RedisScript,
    ScriptRunner,
    ScriptUnanswered,
    decode_live,
    decode_stored,
    encode_body,
    topic_of,
)
from tidings.clock import Clock, SystemClock
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions, dedupe_key
from tidings.core.history import HistoryOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay, decide_recovery, latest
from tidings.errors import BrokerError, BrokerUnavailable, ConfigError

logger = logging.getLogger(__name__)

CLUSTER_SCHEME: Final = "redis-cluster"
DEFAULT_TIMEOUT_S: Final = 5.0
PING_INTERVAL_S: Final = 5.0
PROBE_INTERVAL_S: Final = 1.0
PROBE_TIMEOUT_S: Final = 1.0
PROBE_RETRY_S: Final = 0.05
PUBLISH_TIMEOUT_S: Final = 1.5
RECONNECT_BASE_DELAY_S: Final = 0.05
RECONNECT_MAX_DELAY_S: Final = 2.0
MAX_TOPICS_PER_COMMAND: Final = 5_000
_NO_RETRY: Final = Retry(NoBackoff(), 0)
# What Redis, the network or redis-py's cluster client raise when Redis fails.
_REDIS_ERRORS: Final = (RedisError, RedisClusterException, OSError)


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where and how to reach Redis, from a broker URL."""

    url: str  # what redis-py reads: the broker URL without our own options
    cluster: bool
    prefix: str
    trust_restarts: bool = False

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """Read a ``redis://``, ``rediss://``, ``unix://`` or ``redis-cluster://`` URL.

        The query options ``prefix`` (default ``tidings``), which starts every key and
        topic, and ``trust_restarts`` (``yes`` or ``no``, the default: see the module
        docstring, "Rollbacks") are ours; the others go to redis-py (``socket_timeout``,
        ``max_connections``...).

        Raises:
            ConfigError: the prefix contains ``{`` or ``}`` (they would break hash tags),
                or ``trust_restarts`` is neither ``yes`` nor ``no``.
        """
        parts = urlsplit(url)
        prefix = DEFAULT_PREFIX
        trust_restarts = False
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "prefix":
                prefix = value
            elif name == "trust_restarts":
                if value not in ("yes", "no"):
                    raise ConfigError(f"trust_restarts must be yes or no, got {value!r}")
                trust_restarts = value == "yes"
            elif name == "decode_responses":
                continue  # the broker reads bytes
            else:
                kept.append((name, value))
        if not prefix or "{" in prefix or "}" in prefix:
            raise ConfigError(f"prefix must be non-empty and without braces, got {prefix!r}")
        cluster = parts.scheme == CLUSTER_SCHEME
        scheme = "redis" if cluster else parts.scheme
        rebuilt = urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
        return cls(rebuilt, cluster, prefix, trust_restarts)


def _pubsub_kwargs(kwargs: dict[str, Any], client_name: str) -> dict[str, Any]:
    """Connection settings for a pub/sub link: the client's, in RESP2 (pushes are
    replies), without redis-py's own retries (the broker reconnects) or maintenance
    notification handlers (RESP3 only)."""
    kept = {
        name: value
        for name, value in kwargs.items()
        if not name.startswith(("maint_notifications", "orig_", "oss_cluster_maint"))
    }
    kept.update(protocol=2, retry=_NO_RETRY, client_name=client_name, health_check_interval=0)
    return kept


def _without_credentials(url: str) -> str:
    """``url`` without user and password, for logs."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- pub/sub links -----------------------------------------------------------------------


@dataclass(slots=True)
class _Command:
    """A (un)subscribe or PING sent on a link, and the replies it still awaits."""

    kind: str  # "subscribe" | "unsubscribe" | "ping"
    topics: list[str]
    waiters: list[tuple[asyncio.Future[None], Callable[[], None]] | None]
    replies: int = 0


@dataclass(slots=True)
class _Op:
    kind: str
    topic: str
    waiter: tuple[asyncio.Future[None], Callable[[], None]] | None


class _Link:
    """One pub/sub connection to one Redis server (one per shard in a cluster).

    Single use: once lost or closed it stays closed; the broker opens a new one. Reads
    run in one task, writes in another; replies to (un)subscribes and PINGs come back
    in the order the commands were sent, which is how they are matched.
    """

    def __init__(
        self,
        key: str,
        name: str,
        connection: AbstractConnection,
        *,
        sharded: bool,
        on_message: Callable[[_Link, str, bytes], None],
        on_lost: Callable[[_Link, str], None],
    ) -> None:
        self.key = key  # the broker's key for it: a cluster node's name, "" for one Redis
        self.name = name
        self._connection = connection
        self._sharded = sharded
        self._on_message = on_message
        self._on_lost = on_lost
        self._verbs = ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        self._queue: list[_Op] = []
        self._wake = asyncio.Event()
        self._sent: deque[_Command] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._ping_unanswered = False
        self.is_open = False
        self._closed = False

    async def open(self) -> None:
        """Connect and start reading and writing.

        Raises:
            RedisError, OSError: the connection failed.
        """
        await self._connection.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        self.is_open = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._read(), name=f"tidings redis read {self.name}"),
            loop.create_task(self._write(), name=f"tidings redis write {self.name}"),
        ]

    def request(
        self, kind: str, topic: str, on_confirmed: Callable[[], None]
    ) -> asyncio.Future[None]:
        """Queue a ``subscribe`` or ``unsubscribe`` of ``topic``. The future completes once
        Redis confirmed it, right after ``on_confirmed`` was called: before any message
        that follows the confirmation is handled."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.is_open:
            future.set_exception(ConnectionError(f"the pub/sub link to {self.name} is closed"))
        else:
            self._queue.append(_Op(kind, topic, (future, on_confirmed)))
            self._wake.set()
        return future

    def unsubscribe_nowait(self, topic: str) -> None:
        """Queue an unsubscribe of ``topic`` that nobody waits for."""
        if self.is_open:
            self._queue.append(_Op("unsubscribe", topic, None))
            self._wake.set()

    async def close(self) -> None:
        """Close the connection without telling the broker; idempotent."""
        self._shut(ConnectionError(f"the pub/sub link to {self.name} was closed"))
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._connection.disconnect(nowait=True)

    def _shut(self, error: Exception) -> bool:
        if self._closed:
            return False
        self._closed = True
        self.is_open = False
        pending = [op.waiter for op in self._queue] + [
            waiter for command in self._sent for waiter in command.waiters[command.replies :]
        ]
        self._queue.clear()
        self._sent.clear()
        for waiter in pending:
            if waiter is not None and not waiter[0].done():
                waiter[0].set_exception(error)
        return True

    def _lose(self, reason: str) -> None:
        """The connection failed: close it and tell the broker, once."""
        if not self._shut(ConnectionError(f"lost the pub/sub link to {self.name}: {reason}")):
            return
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._connection.disconnect(nowait=True)))
        self._on_lost(self, reason)

    # -- writing ---------------------------------------------------------------------

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + PING_INTERVAL_S
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, next_ping - loop.time())):
                        await self._wake.wait()
                except TimeoutError:
                    if self._ping_unanswered:
                        self._lose(f"no answer to PING within {PING_INTERVAL_S:g} s")
                        return
                    self._ping_unanswered = True
                    self._queue.append(_Op("ping", "", None))
                    next_ping = loop.time() + PING_INTERVAL_S
                self._wake.clear()
                operations, self._queue = self._queue, []
                if not operations:
                    continue
                commands = self._commands(operations)
                # Registered before sending: the replies may be read before send returns.
                self._sent.extend(commands)
                packed = self._connection.pack_commands(
                    [self._arguments(command) for command in commands]
                )
                await self._connection.send_packed_command(packed, check_health=False)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task boundary: any failure loses the link
            self._lose(f"writing failed: {exc!r}")

    def _arguments(self, command: _Command) -> tuple[str, ...]:
        if command.kind == "ping":
            return ("PING",)
        verb = self._verbs[0] if command.kind == "subscribe" else self._verbs[1]
        return (verb, *command.topics)

    def _commands(self, operations: list[_Op]) -> list[_Command]:
        """Group queued operations into as few commands as order allows: a topic
        appearing twice (unsubscribe then subscribe) splits the groups, so its
        operations stay in order; in a cluster, one command holds one slot's topics."""
        commands: list[_Command] = []
        groups: dict[tuple[str, int], _Command] = {}  # open commands, already in the list
        seen: set[str] = set()
        for op in operations:
            if op.kind == "ping":
                commands.append(_Command("ping", [""], [None]))
                groups.clear()
                seen.clear()
                continue
            if op.topic in seen:
                groups.clear()
                seen.clear()
            seen.add(op.topic)
            group_key = (op.kind, key_slot(op.topic.encode()) if self._sharded else 0)
            group = groups.get(group_key)
            if group is None or len(group.topics) >= MAX_TOPICS_PER_COMMAND:
                group = groups[group_key] = _Command(op.kind, [], [])
                commands.append(group)
            group.topics.append(op.topic)
            group.waiters.append(op.waiter)
        return commands

    # -- reading ---------------------------------------------------------------------

    async def _read(self) -> None:
        connection = self._connection
        try:
            while not self._closed:
                try:
                    reply = await connection.read_response(timeout=math.inf)
                except ResponseError as error:
                    self._fail_first(error)
                    continue
                self._receive(reply)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task boundary: any failure loses the link
            self._lose(f"reading failed: {exc!r}")

    def _receive(self, reply: Any) -> None:
        if isinstance(reply, list) and len(reply) == 3:
            kind = reply[0]
            if kind in (b"message", b"smessage"):
                self._on_message(self, _text(reply[1]), reply[2])
                return
            if kind in (b"subscribe", b"ssubscribe"):
                self._confirm("subscribe", _text(reply[1]))
                return
            if kind in (b"unsubscribe", b"sunsubscribe"):
                self._confirm("unsubscribe", _text(reply[1]))
                return
        if reply == b"PONG" or (isinstance(reply, list) and reply and reply[0] == b"pong"):
            self._ping_unanswered = False
            self._confirm("ping", "")
            return
        logger.warning("unexpected reply on the pub/sub link to %s: %r", self.name, reply)

    def _confirm(self, kind: str, topic: str) -> None:
        command = self._sent[0] if self._sent else None
        if command is None or command.kind != kind or command.topics[command.replies] != topic:
            if kind == "unsubscribe":
                # Redis dropped the subscription itself: in a cluster, its slot moved.
                self._lose(f"Redis unsubscribed {topic} (a slot moved?)")
            else:
                logger.warning("unmatched %s reply for %s on %s", kind, topic, self.name)
            return
        waiter = command.waiters[command.replies]
        command.replies += 1
        if command.replies == len(command.topics):
            self._sent.popleft()
        if waiter is not None:
            future, on_confirmed = waiter
            if not future.done():
                on_confirmed()
                future.set_result(None)

    def _fail_first(self, error: ResponseError) -> None:
        command = self._sent.popleft() if self._sent else None
        if command is not None:
            for waiter in command.waiters[command.replies :]:
                if waiter is not None and not waiter[0].done():
                    waiter[0].set_exception(error)
        logger.warning("Redis refused a pub/sub command on %s: %s", self.name, error)
        if self._sharded:
            # MOVED and the like: the slot map is stale; reconnecting refreshes it.
            self._lose(f"Redis refused a command: {error}")


# -- the broker ----------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class _ChannelState:
    """This node's subscription to one channel; see the theory of operation."""

    channel: ChannelName
    topic: str
    ready: asyncio.Future[None]
    link: _Link | None = None
    subscribed: bool = False  # ``subscribe`` completed
    confirmed: bool = False  # Redis confirmed the subscription on ``link``
    last: Position | None = None  # the last publication handed to the hub
    buffer: list[Publication] | None = None  # live publications held while syncing
    sync_needed: bool = False
    sync_task: asyncio.Task[None] | None = None
    retired_epoch: str | None = None  # an epoch this node moved away from (rollback)
    leaving: asyncio.Future[None] | None = None  # an unsubscribe awaiting Redis


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
        epoch_factory: Callable[[], str] = random_epoch,
        reconnect_max_delay_s: float = RECONNECT_MAX_DELAY_S,
        presence_lifetime_s: float = PRESENCE_LIFETIME_S,
        presence_refresh_s: float = PRESENCE_REFRESH_S,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        probe_interval_s: float = PROBE_INTERVAL_S,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        node_id: str | None = None,
    ) -> None:
        """Prepare a broker for ``url``; nothing connects before ``start``.

        ``node_id`` names this node in presence entries and node commands (random if
        not given); every node sharing the Redis must have its own.

        A client's presence entry outlives its node by at most ``presence_lifetime_s``;
        each node renews its entries every ``presence_refresh_s``. Redis is PINGed
        every ``probe_interval_s`` (and on each ``is_ready``); without an answer within
        ``probe_timeout_s`` it is *unresponsive* until one comes. A publish gets no
        longer than ``publish_timeout_s`` for its answer (see "Readiness and time-outs").

        Raises:
            ConfigError: the URL is not one this broker reads, or the presence refresh
                is not shorter than the lifetime.
        """
        self._target = RedisTarget.parse(url)
        self._display_url = _without_credentials(url)
        self._namespaces = namespaces
        self._clock = clock or SystemClock()
        self._dedupe = dedupe or DedupeOptions()
        self._epoch_factory = epoch_factory
        self._reconnect_max_delay_s = reconnect_max_delay_s
        self.node_id = node_id or secrets.token_hex(8)
        self.pubsub_client_name = f"tidings-pubsub-{self.node_id}"
        self._client: Redis | RedisCluster | None = None
        self._scripts: ScriptRunner | None = None
        self._db = 0
        self._publish_command = "SPUBLISH" if self._target.cluster else "PUBLISH"
        self._on_publication: PublicationHandler | None = None
        self._on_presence: PresenceHandler | None = None
        self._presence = RedisPresence(
            self._target.prefix,
            self._clock,
            self._run_keys,
            lifetime_s=presence_lifetime_s,
            refresh_s=presence_refresh_s,
            node=self.node_id,
        )
        self._control = RedisNodeControl(self.node_id)
        self._control_link: _Link | None = None  # where Redis confirmed the control topic
        self._states: dict[str, _ChannelState] = {}
        self._links: dict[str, _Link] = {}
        self._opening: dict[str, asyncio.Task[_Link]] = {}
        self._recovery: asyncio.Task[None] | None = None
        self._recovery_needed = False
        self._healthy = False
        self._publish_timeout_s = publish_timeout_s
        self._probe_interval_s = probe_interval_s
        self._probe_timeout_s = probe_timeout_s
        self._responsive = True  # Redis answered the last probe in time
        self._probing: asyncio.Task[bool] | None = None
        self._prober: asyncio.Task[None] | None = None
        self._closed = False
        self._debug = logger.isEnabledFor(logging.DEBUG)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(
        self, on_publication: PublicationHandler, on_presence: PresenceHandler | None = None
    ) -> None:
        """Connect and start delivering publications of subscribed channels, and presence
        changes of other nodes, and refreshing this node's presence entries.

        If Redis cannot be reached now, the broker keeps trying in the background and
        is not ready until it succeeds.

        Raises:
            BrokerError: the broker was closed.
        """
        if self._closed:
            raise BrokerError("the Redis broker was closed; make a new one")
        self._on_publication = on_publication
        self._on_presence = on_presence
        if self._client is not None:
            return
        target = self._target
        defaults: dict[str, Any] = {
            "socket_connect_timeout": DEFAULT_TIMEOUT_S,
            "socket_timeout": DEFAULT_TIMEOUT_S,
            "retry": _NO_RETRY,  # a failed publish is reported, never silently repeated
            # Off: with them on, redis-py skips its check of pooled connections, and a
            # connection Redis closed (a restart) would fail the next command.
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        }
        client: Redis | RedisCluster
        if target.cluster:
            client = RedisCluster.from_url(target.url, **defaults)
        else:
            pool = ConnectionPool.from_url(target.url, **defaults)
            self._db = int(pool.connection_kwargs.get("db") or 0)
            client = Redis.from_pool(pool)  # closing the client closes the pool
        self._client = client
        self._scripts = ScriptRunner(client, trust_restarts=target.trust_restarts)
        self._presence.start()
        self._prober = asyncio.get_running_loop().create_task(
            self._probe_periodically(), name="tidings redis probe"
        )
        try:
            await self._connect()
            await self._listen_for_commands()
        except (*_REDIS_ERRORS, BrokerError) as exc:
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
        self._on_publication = None
        self._on_presence = None
        await self._presence.close()
        tasks = [
            t
            for t in (self._recovery, self._prober, self._probing, *self._opening.values())
            if t is not None
        ]
        tasks += [s.sync_task for s in self._states.values() if s.sync_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        for state in self._states.values():
            if not state.ready.done():
                state.ready.cancel()
        self._states.clear()
        if self._scripts is not None:
            await self._scripts.close()
        if self._client is not None:
            await self._client.aclose()
        logger.info("Redis broker closed")

    async def is_ready(self) -> bool:
        """Whether Redis answers a PING now, within the probe time-out (so this returns
        within it), and every subscribed channel is subscribed there."""
        if self._closed or not self._healthy or self._client is None:
            return False
        return await self._probe()

    # -- readiness: an active probe ----------------------------------------------------

    async def _probe_periodically(self) -> None:
        loop = asyncio.get_running_loop()
        pause_s = self._probe_interval_s
        while True:
            await asyncio.sleep(pause_s)
            began = loop.time()
            await self._probe()
            # One PING per interval at most; one that waited out its time-out (a silent
            # Redis, refusing publishes meanwhile) is followed at once, so that the
            # answer after a stall is heard without waiting another interval.
            pause_s = max(PROBE_RETRY_S, self._probe_interval_s - (loop.time() - began))

    async def _probe(self) -> bool:
        """PING Redis on a command connection; whether it answered in time. Concurrent
        callers share one PING."""
        if self._probing is None:
            self._probing = asyncio.get_running_loop().create_task(
                self._ping(), name="tidings redis ping"
            )
        return await asyncio.shield(self._probing)

    async def _ping(self) -> bool:
        client = self._client
        assert client is not None, "started"
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                await client.ping()
        except (*_REDIS_ERRORS, TimeoutError) as exc:
            if self._responsive:
                logger.warning(
                    "Redis at %s did not answer a PING within %g s (%s): not ready, "
                    "publishes fail at once until it answers",
                    self._display_url,
                    self._probe_timeout_s,
                    str(exc) or type(exc).__name__,
                )
            self._responsive = False
            return False
        else:
            if not self._responsive:
                logger.info("Redis at %s answers again", self._display_url)
            self._responsive = True
            return True
        finally:
            self._probing = None

    # -- publishing and history ------------------------------------------------------------

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
        history = self._namespaces.options_for(channel).history
        now_ms = self._clock.now_ms()
        topic = topic_of(self._target.prefix, self._db, channel)
        # A head behind what this node delivered was rolled back in place: the script
        # moves it to a new epoch (see redis_scripts).
        state = self._states.get(topic)
        floor = None if state is None else state.last
        args = (
            self._epoch_factory(),
            encode_body(data, now_ms, key, info),
            now_ms,
            "" if key is None else dedupe_key(key, info),
            history.size,
            history.ttl_ms,
            max(1, self._dedupe.window_ms),
            self._dedupe.max_keys,
            topic,
            self._publish_command,
            channel,
            "" if floor is None else floor.epoch,
            0 if floor is None else floor.offset,
        )
        what = f"publishing in {channel}"
        try:
            reply = await self._run(PUBLISH, channel, args, what, self._publish_timeout_s)
        except ScriptUnanswered as exc:
            if not exc.sent:
                raise BrokerUnavailable(
                    f"{what} failed: Redis at {self._display_url} did not answer within "
                    f"{exc.timeout_s:g} s; it was not sent and will not be published"
                ) from exc
            raise BrokerError(
                f"{what} failed: Redis at {self._display_url} did not answer within "
                f"{exc.timeout_s:g} s; it may have been published; retry with the same key"
            ) from exc
        epoch, offset, duplicate = reply
        return PublishResult(Position(_text(epoch), int(offset)), duplicate=bool(duplicate))

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``) with one script.

        Raises:
            BrokerError: Redis failed or is unreachable.
        """
        options = self._namespaces.options_for(channel).history
        wanted = options.size if limit is None else min(max(limit, 0), options.size)
        if since is None:
            mode, since_epoch, since_offset = ("latest" if wanted > 0 else "head"), "", 0
        else:
            mode, since_epoch, since_offset = "after", since.epoch, since.offset
        args = (self._epoch_factory(), options.ttl_ms, mode, since_epoch, since_offset)
        reply = await self._run(
            READ, channel, (*args, max(1, wanted)), f"reading the history of {channel}"
        )
        epoch, head_offset = _text(reply[0]), int(reply[1])
        entries = reply[2] if mode == "after" else list(reversed(reply[2]))
        try:
            publications = [
                decode_stored(channel, epoch, id_, fields[1]) for id_, fields in entries
            ]
        except (msgspec.ValidationError, ValueError, IndexError) as exc:
            raise BrokerError(f"the history of {channel} holds an unreadable entry") from exc
        retained = _retained(publications, head_offset, options, self._clock.now_ms())
        head = Position(epoch, head_offset)
        if since is None:
            return HistoryRead(head, Replay(latest(retained, limit)))
        return HistoryRead(head, decide_recovery(since, epoch, head_offset, retained, limit))

    async def _run(
        self,
        script: RedisScript,
        channel: ChannelName,
        args: Sequence[str | bytes | int],
        what: str,
        timeout_s: float | None = None,
    ) -> Any:
        keys = ChannelKeys.of(self._target.prefix, channel).as_tuple()
        return await self._run_keys(script, keys, args, what, timeout_s)

    async def _run_keys(
        self,
        script: RedisScript,
        keys: tuple[str, ...],
        args: Sequence[str | bytes | int],
        what: str,
        timeout_s: float | None = None,
    ) -> Any:
        """Run ``script``; fail at once, sending nothing, while Redis is unresponsive.

        Raises:
            BrokerUnavailable: Redis did not answer the last probe; nothing was sent.
            BrokerError: Redis failed.
            ScriptUnanswered: no answer within ``timeout_s``.
        """
        if self._closed or self._scripts is None:
            raise BrokerUnavailable(f"{what} failed: the Redis broker is not started")
        if not self._responsive:
            raise BrokerUnavailable(
                f"{what} failed: Redis at {self._display_url} did not answer a PING within "
                f"{self._probe_timeout_s:g} s; nothing was sent"
            )
        try:
            return await self._scripts.run(script, keys, args, timeout_s=timeout_s)
        except _REDIS_ERRORS as exc:
            raise BrokerError(f"{what} failed: {exc}") from exc

    # -- presence ----------------------------------------------------------------------------

    async def presence_join(self, channel: ChannelName, client_id: str, user: str) -> None:
        """Write ``client_id``'s presence entry and tell other nodes (``Broker.presence_join``).

        Raises:
            BrokerError: Redis failed; an entry written anyway expires.
        """
        topic = topic_of(self._target.prefix, self._db, channel)
        await self._presence.join(channel, client_id, user, topic, self._publish_command)

    async def presence_leave(self, channel: ChannelName, client_id: str) -> None:
        """Delete ``client_id``'s presence entry and tell other nodes (``Broker.presence_leave``).

        Raises:
            BrokerError: Redis failed; the entry left behind expires (it is no longer
                refreshed).
        """
        topic = topic_of(self._target.prefix, self._db, channel)
        await self._presence.leave(channel, client_id, topic, self._publish_command)

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return the unexpired presence entries of ``channel``, on every node.

        Raises:
            BrokerError: Redis failed.
        """
        return await self._presence.clients(channel)

    # -- node commands (``NodeControl``, ``redis_control``) ---------------------------------

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
        if not self._responsive:
            raise BrokerUnavailable(
                f"{what} failed: Redis at {self._display_url} did not answer a PING within "
                f"{self._probe_timeout_s:g} s; nothing was sent"
            )
        payload = self._control.encode(command)
        try:
            async with asyncio.timeout(self._publish_timeout_s):
                if self._target.cluster:
                    receivers = await client.spublish(self._control_topic, payload)
                else:
                    receivers = await client.publish(self._control_topic, payload)
        except (*_REDIS_ERRORS, TimeoutError) as exc:
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

    # -- subscriptions -------------------------------------------------------------------

    async def subscribe(self, channel: ChannelName) -> None:
        """Deliver ``channel``'s publications to this node; returns once Redis confirmed.

        Raises:
            BrokerError: Redis is unreachable now (the broker is reconnecting).
        """
        topic = topic_of(self._target.prefix, self._db, channel)
        while (state := self._states.get(topic)) is not None:
            if state.leaving is None:
                await asyncio.shield(state.ready)
                return
            # An unsubscribe is under way: subscribe again once it is done.
            if state.leaving.done():
                self._drop(state)
            else:
                await asyncio.wait([state.leaving])
        if self._closed or not self._healthy:
            raise BrokerError(f"cannot subscribe {channel}: Redis is not reachable now")
        state = _ChannelState(channel, topic, asyncio.get_running_loop().create_future())
        self._states[topic] = state
        try:
            await self._subscribe_at_redis(state)
            # The head after the confirmation: what the hub reads next covers up to it.
            read = await self.history(channel, limit=0)
            if self._states.get(topic) is state and not state.confirmed:
                raise BrokerError(f"lost the connection to Redis while subscribing {channel}")
        except BaseException as exc:
            if self._states.get(topic) is state:
                self._drop(state)
                if state.link is not None and state.link.is_open:
                    state.link.unsubscribe_nowait(topic)
            if not isinstance(exc, Exception):
                state.ready.cancel()
                raise
            if isinstance(exc, _REDIS_ERRORS):
                error = BrokerError(f"subscribing {channel} failed: {exc}")
                error.__cause__ = exc
                state.ready.set_exception(error)
                state.ready.exception()  # retrieved: there may be no other waiter
                raise error from exc
            state.ready.set_exception(exc)
            state.ready.exception()
            raise
        if state.last is None:
            state.last = read.head
        state.subscribed = True
        state.ready.set_result(None)

    async def _subscribe_at_redis(self, state: _ChannelState) -> None:
        link = await self._link_for(state.topic)
        state.link = link
        state.confirmed = False
        await link.request("subscribe", state.topic, lambda: self._confirmed(state, link))

    def _confirmed(self, state: _ChannelState, link: _Link) -> None:
        if self._states.get(state.topic) is state and state.link is link:
            state.confirmed = True

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications to this node; returns once Redis
        confirmed. Publications made before the call are still delivered (those Redis
        sent before its confirmation); none made after it returns."""
        topic = topic_of(self._target.prefix, self._db, channel)
        state = self._states.get(topic)
        if state is None:
            return
        if state.leaving is None:
            if not state.ready.done():
                await asyncio.wait([state.ready])  # a subscribe under way: let it finish
                if self._states.get(topic) is not state or state.leaving is not None:
                    await self.unsubscribe(channel)
                    return
            link = state.link
            if link is None or not link.is_open or not state.confirmed:
                self._drop(state)
                return
            state.leaving = link.request("unsubscribe", topic, lambda: self._drop(state))
        try:
            await asyncio.shield(state.leaving)
        except _REDIS_ERRORS:
            self._drop(state)  # the link is gone (or refused): nothing more comes from it

    def _drop(self, state: _ChannelState) -> None:
        """Forget ``state``: nothing more is delivered for it."""
        if self._states.get(state.topic) is state:
            del self._states[state.topic]
        state.confirmed = False
        if state.sync_task is not None:
            state.sync_task.cancel()

    async def _link_for(self, topic: str) -> _Link:
        """Return the open link to the server holding ``topic``, opening it if needed."""
        client = self._client
        assert client is not None, "started"
        node: ClusterNode | None = None
        name = ""
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(topic)
            if node is None:
                raise BrokerError(f"no Redis Cluster node serves {topic}")
            name = node.name
        link = self._links.get(name)
        if link is not None and link.is_open:
            return link
        opening = self._opening.get(name)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open_link(name, node))
            self._opening[name] = opening
        return await asyncio.shield(opening)

    async def _open_link(self, name: str, node: ClusterNode | None) -> _Link:
        try:
            if node is None:
                assert isinstance(self._client, Redis)
                pool = self._client.connection_pool
                kwargs = _pubsub_kwargs(pool.connection_kwargs, self.pubsub_client_name)
                connection = pool.connection_class(**kwargs)
            else:
                kwargs = _pubsub_kwargs(node.connection_kwargs, self.pubsub_client_name)
                connection = node.connection_class(**kwargs)
            link = _Link(
                name,
                name or self._display_url,
                connection,
                sharded=node is not None,
                on_message=self._on_message,
                on_lost=self._link_lost,
            )
            await link.open()
            if self._closed:
                await link.close()
                raise BrokerError("the Redis broker was closed")
            self._links[name] = link
            return link
        finally:
            del self._opening[name]

    # -- receiving -------------------------------------------------------------------------

    def _on_message(self, link: _Link, topic: str, payload: bytes) -> None:
        state = self._states.get(topic)
        if state is None or state.link is not link or not state.confirmed:
            if state is None and link is self._control_link and topic == self._control_topic:
                self._control.receive(payload)
            return  # not (or no longer, or not yet) subscribed: see the theory of operation
        if is_presence_frame(payload):
            self._receive_presence(payload)
            return
        try:
            publication = decode_live(payload)
        except (msgspec.ValidationError, ValueError):
            logger.error("unreadable publication on %s: %r", topic, payload[:200])
            return
        if self._debug:
            logger.debug("received %s at %s", publication.channel, publication.position)
        if state.buffer is not None:
            state.buffer.append(publication)
        elif not self._accept(state, publication):
            state.buffer = [publication]
            self._request_sync(state)

    def _receive_presence(self, payload: bytes) -> None:
        change = self._presence.receive(payload)
        handler = self._on_presence
        if change is None or handler is None:
            return
        try:
            handler(change)
        except Exception:  # a faulty handler must not stop delivery
            logger.exception("presence handler failed on %s", change.channel)

    def _accept(self, state: _ChannelState, publication: Publication) -> bool:
        """Deliver ``publication`` if it follows ``state.last``; drop a repeat. Return
        False (delivering nothing) when publications before it are missing."""
        last = state.last
        if last is not None:
            if publication.epoch == last.epoch:
                if publication.offset <= last.offset:
                    return True
                if publication.offset != last.offset + 1:
                    return False
            elif publication.epoch == state.retired_epoch:
                return True
            elif publication.offset != 1:
                state.last = Position(publication.epoch, 0)
                return False
        state.last = publication.position
        handler = self._on_publication
        if handler is not None:
            try:
                handler(publication)
            except Exception:  # a faulty handler must not stop delivery
                logger.exception("publication handler failed on %s", publication.channel)
        return True

    # -- syncing: filling gaps from history ------------------------------------------------

    def _request_sync(self, state: _ChannelState) -> None:
        if state.buffer is None:
            state.buffer = []
        state.sync_needed = True
        if state.sync_task is None and not self._closed:
            state.sync_task = asyncio.get_running_loop().create_task(
                self._sync(state), name=f"tidings redis sync {state.channel}"
            )

    async def _sync(self, state: _ChannelState) -> None:
        delay = _Backoff(self._reconnect_max_delay_s)
        try:
            while state.sync_needed and self._states.get(state.topic) is state:
                if not state.confirmed:
                    return  # resubscribing: the recovery asks again once confirmed
                state.sync_needed = False
                try:
                    await self._sync_once(state)
                except Exception as exc:  # the task boundary: the channel must not stall
                    state.sync_needed = True
                    expected = isinstance(exc, BrokerError)
                    logger.log(
                        logging.WARNING if expected else logging.ERROR,
                        "filling the gap of %s failed: %s",
                        state.channel,
                        exc,
                        exc_info=not expected,
                    )
                    await asyncio.sleep(delay.next_s())
        finally:
            state.sync_task = None

    async def _sync_once(self, state: _ChannelState) -> None:
        channel = state.channel
        since = state.last
        read = await self.history(channel, since)
        if self._states.get(state.topic) is not state:
            return
        recovery = read.recovery
        if since is None:
            state.last = read.head
        elif isinstance(recovery, Gap):
            await self._jump(state, since, read.head, recovery)
            state.sync_needed = True
            return
        else:
            for publication in recovery.publications:
                self._accept(state, publication)
        # Live publications held meanwhile, by the same rule. One of an epoch other than
        # the head's read now is stale (or so new that the next publication after it
        # will start another round); delivering it could only go back in time.
        buffered = state.buffer or []
        state.buffer = None
        current = read.head.epoch
        for index, publication in enumerate(buffered):
            if publication.epoch != current:
                continue
            if not self._accept(state, publication):
                state.buffer = buffered[index:]
                state.sync_needed = True
                return

    async def _jump(self, state: _ChannelState, since: Position, head: Position, gap: Gap) -> None:
        """Move ``state.last`` past a gap history cannot fill."""
        channel = state.channel
        if gap.reason is GapReason.EPOCH_CHANGED:
            logger.warning(
                "Redis lost or rolled back %s (restarted, failed over, slot moved): "
                "epoch %s replaced %s",
                channel,
                head.epoch,
                since.epoch,
            )
            state.last = Position(head.epoch, 0)
        elif gap.reason is GapReason.AHEAD_OF_HEAD:
            # Redis came back from an older snapshot: offsets past its head were given
            # out already. Move the channel to a new epoch rather than reuse them.
            reply = await self._run(
                RESET, channel, (since.epoch, since.offset, self._epoch_factory()), "resetting"
            )
            epoch = _text(reply[0])
            logger.warning(
                "Redis rolled %s back from %s to offset %d; new epoch %s",
                channel,
                since,
                head.offset,
                epoch,
            )
            state.retired_epoch = since.epoch
            state.last = Position(epoch, 0) if epoch != since.epoch else since
        else:
            latest_read = await self.history(channel)
            retained = latest_read.recovery
            assert isinstance(retained, Replay)
            newest = latest_read.head
            first = retained.publications[0].offset if retained.publications else newest.offset + 1
            logger.warning(
                "publications %d..%d of %s were evicted before this node received them",
                since.offset + 1,
                first - 1,
                channel,
            )
            state.last = Position(newest.epoch, first - 1)

    # -- recovery ------------------------------------------------------------------------

    def _link_lost(self, link: _Link, reason: str) -> None:
        if self._closed or self._links.get(link.key) is not link:
            return
        del self._links[link.key]
        logger.warning("lost the Redis pub/sub connection to %s: %s", link.name, reason)
        for state in self._states.values():
            if state.link is link:
                state.confirmed = False
        self._healthy = False
        self._start_recovery()

    def _start_recovery(self) -> None:
        self._recovery_needed = True
        if self._recovery is None and not self._closed:
            self._recovery = asyncio.get_running_loop().create_task(
                self._recover(), name="tidings redis recovery"
            )

    async def _recover(self) -> None:
        delay = _Backoff(self._reconnect_max_delay_s)
        try:
            while not self._closed:
                self._recovery_needed = False
                try:
                    count = await self._resubscribe()
                except Exception as exc:  # the task boundary: whatever failed, try again
                    self._recovery_needed = True
                    wait_s = delay.next_s()
                    expected = isinstance(exc, (*_REDIS_ERRORS, BrokerError))
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
        for state in [s for s in self._states.values() if s.leaving is not None]:
            self._drop(state)  # was unsubscribing when the link was lost: done
        states = [s for s in self._states.values() if s.subscribed and not s.confirmed]
        waits = []
        for state in states:
            if state.buffer is None:
                state.buffer = []
            waits.append(self._subscribe_at_redis(state))
        results = await asyncio.gather(*waits, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        for state in states:
            if self._states.get(state.topic) is state and state.confirmed:
                self._request_sync(state)
        return len(states)


class _Backoff:
    """Exponential backoff with full jitter: the n-th wait is uniform in
    ``[0, min(cap, base * 2**n)]``, so reconnecting nodes spread over the window."""

    __slots__ = ("_attempt", "_cap_s")

    def __init__(self, cap_s: float) -> None:
        self._cap_s = cap_s
        self._attempt = 0

    def next_s(self) -> float:
        ceiling = min(self._cap_s, RECONNECT_BASE_DELAY_S * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return random.uniform(0.0, ceiling)


def _retained(
    publications: list[Publication], head_offset: int, options: HistoryOptions, now_ms: int
) -> list[Publication]:
    """Keep what the namespace retains: the last ``size`` offsets, evicting from the
    front those older than the ttl (as ``ChannelHistory`` does)."""
    first_kept = head_offset - options.size + 1
    oldest_ms = now_ms - options.ttl_ms
    start = 0
    while start < len(publications) and (
        publications[start].offset < first_kept or publications[start].ts < oldest_ms
    ):
        start += 1
    return publications[start:]
