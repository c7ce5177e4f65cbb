"""A pub/sub link: one RESP2 connection to one Redis server that (un)subscribes topics.

The broker (``redis``) keeps one link per server (one per shard in a cluster) and
subscribes each channel's topic on the link of the server holding it. A link's writer
sends everything queued since its last write as one command (one per slot in a
cluster, all in one write), so a reconnect storm of thousands of channels costs a
handful of commands. Replies to (un)subscribes and PINGs come back in the order the
commands were sent, which is how they are matched; each request's future completes
once Redis confirmed it. A link that sees no answer to a PING within
``PING_INTERVAL_S``, an EOF or an error is *lost*: it closes and tells the broker once,
which opens a new one (see "Theory of operation" in ``redis``).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from tidings.errors import BrokerError

logger = logging.getLogger(__name__)

PING_INTERVAL_S: Final = 5.0
MAX_TOPICS_PER_COMMAND: Final = 5_000
# redis-py's retries off: a failed publish is reported, a lost link reconnected by the
# broker, never silently repeated.
NO_RETRY: Final = Retry(NoBackoff(), 0)
# What Redis, the network or redis-py's cluster client raise when Redis fails.
REDIS_ERRORS: Final = (RedisError, RedisClusterException, OSError)


def pubsub_kwargs(kwargs: dict[str, Any], client_name: str) -> dict[str, Any]:
    """Connection settings for a pub/sub link: the client's, in RESP2 (pushes are
    replies), without redis-py's own retries (the broker reconnects) or maintenance
    notification handlers (RESP3 only)."""
    kept = {
        name: value
        for name, value in kwargs.items()
        if not name.startswith(("maint_notifications", "orig_", "oss_cluster_maint"))
    }
    kept.update(protocol=2, retry=NO_RETRY, client_name=client_name, health_check_interval=0)
    return kept


def text_of(value: object) -> str:
    """A Redis reply's bytes (or other value) as text."""
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


class PubSubLink:
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
        on_message: Callable[[PubSubLink, str, bytes], None],
        on_lost: Callable[[PubSubLink, str], None],
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
                self._on_message(self, text_of(reply[1]), reply[2])
                return
            if kind in (b"subscribe", b"ssubscribe"):
                self._confirm("subscribe", text_of(reply[1]))
                return
            if kind in (b"unsubscribe", b"sunsubscribe"):
                self._confirm("unsubscribe", text_of(reply[1]))
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


class PubSubLinks:
    """The broker's pub/sub links: one open link per server, opened on first need and
    shared by every topic that server holds; a lost link is forgotten, and the next
    need opens a new one."""

    def __init__(
        self,
        client_name: str,
        display_url: str,
        *,
        on_message: Callable[[PubSubLink, str, bytes], None],
        on_lost: Callable[[PubSubLink, str], None],
    ) -> None:
        self._client_name = client_name  # the CLIENT SETNAME of every link
        self._display_url = display_url
        self._on_message = on_message
        self._on_lost = on_lost
        self._links: dict[str, PubSubLink] = {}
        self._opening: dict[str, asyncio.Task[PubSubLink]] = {}
        self._closed = False

    async def for_topic(self, client: Redis | RedisCluster, topic: str) -> PubSubLink:
        """Return the open link to the server holding ``topic``, opening it if needed.

        Raises:
            BrokerError: no cluster node serves ``topic``, or the links were closed.
            RedisError, OSError: the connection failed.
        """
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
            opening = asyncio.get_running_loop().create_task(self._open(client, name, node))
            self._opening[name] = opening
        return await asyncio.shield(opening)

    def forget(self, link: PubSubLink) -> bool:
        """Forget a lost ``link``; return whether it was its server's current link."""
        if self._closed or self._links.get(link.key) is not link:
            return False
        del self._links[link.key]
        return True

    async def close(self) -> None:
        """Stop opening links and close the open ones; idempotent."""
        self._closed = True
        opening = list(self._opening.values())
        for task in opening:
            task.cancel()
        await asyncio.gather(*opening, return_exceptions=True)
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)

    async def _open(
        self, client: Redis | RedisCluster, name: str, node: ClusterNode | None
    ) -> PubSubLink:
        try:
            if node is None:
                assert isinstance(client, Redis)
                pool = client.connection_pool
                kwargs = pubsub_kwargs(pool.connection_kwargs, self._client_name)
                connection = pool.connection_class(**kwargs)
            else:
                kwargs = pubsub_kwargs(node.connection_kwargs, self._client_name)
                connection = node.connection_class(**kwargs)
            link = PubSubLink(
                name,
                name or self._display_url,
                connection,
                sharded=node is not None,
                on_message=self._on_message,
                on_lost=self._on_lost,
            )
            await link.open()
            if self._closed:
                await link.close()
                raise BrokerError("the Redis broker was closed")
            self._links[name] = link
            return link
        finally:
            del self._opening[name]
