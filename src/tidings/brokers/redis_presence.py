"""Presence for the Redis broker (its ``PresenceStore``): who holds a channel on every
node, and join/leave events between nodes. Network I/O through the broker's
``redis_runner``; frames arrive through the broker's pub/sub link (``receive``).

Each channel ``C`` with present clients has a hash (same hash tag as the channel's other
keys, so one slot in a cluster, and one script can write it and publish on the topic)::

    <prefix>:{C}:presence   hash   client_id -> {"user":..,"node":..,"expires_ms":..}
                                   TTL = the lifetime, renewed on each join and refresh

An entry is written by the node its client is connected to, and expires ``lifetime``
after that node's last refresh. Each node refreshes all of its own entries on one timer
(every ``refresh_s``, one script per channel, pipelined together); ``clients()`` drops
(HDEL) the expired entries it finds. So a node that died without leaving stops
refreshing, and its clients drop out of presence after the lifetime. A refresh only
renews entries that are still there, so a leave racing a refresh cannot bring the
entry back; after Redis lost its data (the pub/sub link was lost and reconnected), the
next refresh writes every entry again.

Join and leave events travel on the channel's existing topic, as a frame that starts
``{"presence":`` (a publication starts ``{"channel":``). Why the same topic: a node
needs a channel's presence events exactly while it is subscribed to the channel, which
is when it is subscribed to the topic, so no second subscription to keep in step with
the first. Each frame names the node that made it, and that node ignores it: its hub
announced the change already.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Literal

import msgspec

from tidings.brokers.base import PresenceChange, PresenceHandler
from tidings.brokers.redis_scripts import RedisScript
from tidings.clock import Clock
from tidings.core.channel import ChannelName
from tidings.errors import BrokerError, ConfigError

logger = logging.getLogger(__name__)

PRESENCE_LIFETIME_S: Final = 30.0
PRESENCE_REFRESH_S: Final = 10.0
FRAME_START: Final = b'{"presence":'

# KEYS: the presence hash. ARGV: client id, entry, lifetime ms, frame, topic, PUBLISH verb.
JOIN_SOURCE: Final = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call(ARGV[6], ARGV[5], ARGV[4])
return 1
"""

# KEYS: the presence hash. ARGV: client id, frame, topic, PUBLISH verb.
LEAVE_SOURCE: Final = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call(ARGV[4], ARGV[3], ARGV[2])
end
return 1
"""

# KEYS: the presence hash. ARGV: lifetime ms, '1' to write missing entries too, then
# client id and entry pairs. Without the flag, only entries still present are renewed.
REFRESH_SOURCE: Final = """
local restore = ARGV[2] == '1'
for i = 3, #ARGV, 2 do
  if restore or redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: the presence hash. ARGV: now ms. Drops expired (and unreadable) entries and
# returns the others as {client id, entry, ...}.
LIST_SOURCE: Final = """
local found = {}
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[1])
for i = 1, #all, 2 do
  local ok, entry = pcall(cjson.decode, all[i + 1])
  if ok and type(entry) == 'table' and tonumber(entry.expires_ms) and
      tonumber(entry.expires_ms) > now then
    found[#found + 1] = all[i]
    found[#found + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return found
"""

JOIN: Final = RedisScript.of("presence-join", JOIN_SOURCE)
LEAVE: Final = RedisScript.of("presence-leave", LEAVE_SOURCE)
REFRESH: Final = RedisScript.of("presence-refresh", REFRESH_SOURCE)
LIST: Final = RedisScript.of("presence-list", LIST_SOURCE)

ScriptCall = Callable[
    [RedisScript, tuple[str, ...], Sequence[str | bytes | int], str], Awaitable[Any]
]


def presence_key_of(prefix: str, channel: ChannelName) -> str:
    """Return the key of ``channel``'s presence hash under ``prefix``."""
    return f"{prefix}:{{{channel}}}:presence"


class _Entry(msgspec.Struct, frozen=True):
    user: str
    node: str
    expires_ms: int


class _Frame(msgspec.Struct, frozen=True):
    presence: Literal["join", "leave"]
    channel: str
    client: str
    user: str
    node: str


_encode = msgspec.json.Encoder().encode
_decode_entry = msgspec.json.Decoder(_Entry).decode
_decode_frame = msgspec.json.Decoder(_Frame).decode


def is_presence_frame(payload: bytes) -> bool:
    """Whether a message received on a channel's topic is a presence frame."""
    return payload.startswith(FRAME_START)


class RedisPresence:
    """This node's side of presence in Redis, a ``PresenceStore``; see the module docstring.

    Attributes:
        node: this node's id, written in its entries and frames.
    """

    def __init__(
        self,
        prefix: str,
        clock: Clock,
        run: ScriptCall,
        topic_of: Callable[[ChannelName], str],
        publish_verb: str,
        *,
        lifetime_s: float = PRESENCE_LIFETIME_S,
        refresh_s: float = PRESENCE_REFRESH_S,
        node: str | None = None,
    ) -> None:
        """Prepare presence for keys under ``prefix``; ``run`` runs a script on Redis;
        frames go to ``topic_of(channel)`` with ``publish_verb`` (``PUBLISH`` or, in a
        cluster, ``SPUBLISH``); ``node`` is this node's id (random if not given; must
        differ between nodes).

        Raises:
            ConfigError: ``refresh_s`` is not positive and shorter than ``lifetime_s``.
        """
        if not 0 < refresh_s < lifetime_s:
            raise ConfigError(
                f"presence refresh must be positive and below its lifetime ({lifetime_s:g} s), "
                f"got {refresh_s:g} s"
            )
        self.node = node or secrets.token_hex(8)
        self._prefix = prefix
        self._clock = clock
        self._run = run
        self._topic_of = topic_of
        self._verb = publish_verb
        self._on_change: PresenceHandler | None = None
        self._lifetime_ms = max(1, round(lifetime_s * 1000))
        self._refresh_s = refresh_s
        self._joined: dict[ChannelName, dict[str, str]] = {}  # this node's entries
        self._restore = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start refreshing this node's entries."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="tidings redis presence refresh"
            )

    async def close(self) -> None:
        """Stop refreshing; the entries left expire after the lifetime."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def restore_on_next_refresh(self) -> None:
        """Redis may have lost the entries (reconnected): write them all again next time."""
        self._restore = True

    def listen(self, on_change: PresenceHandler) -> None:
        """Hand the changes other nodes make to ``on_change`` (``PresenceStore.listen``)."""
        self._on_change = on_change

    async def join(self, channel: ChannelName, client_id: str, user: str) -> None:
        """Write ``client_id``'s entry and publish a join frame on the channel's topic.

        Raises:
            BrokerError: Redis failed; an entry written anyway expires.
        """
        self._joined.setdefault(channel, {})[client_id] = user
        frame = _encode(_Frame("join", channel, client_id, user, self.node))
        topic = self._topic_of(channel)
        args = (client_id, self._entry(user), self._lifetime_ms, frame, topic, self._verb)
        await self._run(JOIN, self._keys(channel), args, f"joining {client_id} to {channel}")

    async def leave(self, channel: ChannelName, client_id: str) -> None:
        """Delete ``client_id``'s entry and, if it was there, publish a leave frame.

        Raises:
            BrokerError: Redis failed; the entry left behind expires (it is no longer
                refreshed).
        """
        clients = self._joined.get(channel)
        if clients is None or (user := clients.pop(client_id, None)) is None:
            return
        if not clients:
            del self._joined[channel]
        frame = _encode(_Frame("leave", channel, client_id, user, self.node))
        args = (client_id, frame, self._topic_of(channel), self._verb)
        await self._run(LEAVE, self._keys(channel), args, f"removing {client_id} from {channel}")

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return ``{client_id: user}`` of the unexpired entries, on every node, dropping
        the others.

        Raises:
            BrokerError: Redis failed.
        """
        reply = await self._run(
            LIST, self._keys(channel), (self._clock.now_ms(),), f"reading presence of {channel}"
        )
        found: dict[str, str] = {}
        for index in range(0, len(reply), 2):
            try:
                entry = _decode_entry(reply[index + 1])
            except msgspec.ValidationError:
                continue  # the script dropped unreadable entries; this cannot be one
            client = reply[index]
            found[client.decode() if isinstance(client, bytes) else str(client)] = entry.user
        return found

    def receive(self, payload: bytes) -> None:
        """Hand a presence frame of another node to the listener; ignore this node's own
        (its hub announced them) and unreadable ones."""
        try:
            frame = _decode_frame(payload)
        except msgspec.ValidationError:
            logger.error("unreadable presence frame: %r", payload[:200])
            return
        handler = self._on_change
        if frame.node == self.node or handler is None:
            return
        channel = ChannelName(frame.channel)
        change = PresenceChange(frame.presence, channel, frame.client, frame.user)
        try:
            handler(change)
        except Exception:  # a faulty handler must not stop delivery
            logger.exception("presence handler failed on %s", change.channel)

    async def refresh(self) -> None:
        """Renew this node's entries: one script per channel, sent together.

        Raises:
            BrokerError: Redis failed for at least one channel.
        """
        restore, self._restore = self._restore, False
        calls = []
        for channel, clients in self._joined.items():
            args: list[str | bytes | int] = [self._lifetime_ms, "1" if restore else "0"]
            for client_id, user in clients.items():
                args += (client_id, self._entry(user))
            calls.append(self._run(REFRESH, self._keys(channel), args, f"refreshing {channel}"))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            self._restore = self._restore or restore
            raise BrokerError(f"refreshing presence failed: {failures[0]}") from failures[0]

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except BrokerError as exc:
                logger.warning("%s; entries of this node may expire", exc)
            except Exception:  # the task boundary: keep refreshing
                logger.exception("refreshing presence failed")

    def _entry(self, user: str) -> bytes:
        return _encode(_Entry(user, self.node, self._clock.now_ms() + self._lifetime_ms))

    def _keys(self, channel: ChannelName) -> tuple[str, ...]:
        return (presence_key_of(self._prefix, channel),)
