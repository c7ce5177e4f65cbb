"""What the Redis broker stores in Redis, the Lua scripts that change it, and the runner
that sends them (the only I/O here, through ``redis.asyncio``).

Key layout, per channel ``C`` (every key and the topic carry the hash tag ``{C}``, so
in a Redis Cluster they all live in one slot, on one shard, and one script may touch
them all)::

    <prefix>:{C}:head          hash   epoch, offset (the last offset given)   no TTL
    <prefix>:{C}:history       stream one entry per retained publication,
                                      id "<offset>-0", field "p" = the body   TTL = history ttl
    <prefix>:{C}:key-offsets   hash   idempotency key -> offset               TTL = dedupe window
    <prefix>:{C}:key-times     zset   idempotency key, scored by its ts       TTL = dedupe window
    <prefix>:<db>:{C}          the pub/sub topic (a shard channel in a cluster)

A *body* is the JSON object ``{"ts":..,"key":..,"info":{..},"data":<data>}`` (``key``
and ``info`` only when present), built by the publisher; ``data`` is the publisher's
JSON text, byte for byte. The stream keeps bodies; the topic carries
``{"channel":..,"epoch":..,"offset":..`` followed by the rest of the body, so a
publication on the topic is one JSON object with everything a ``Publication`` holds.

Every script first makes sure the channel has a head: a missing head means Redis lost
the channel (or never had it), so the script starts a new epoch from the candidate the
caller passed (Lua has no good randomness) and drops whatever stream and keys were left,
so offsets restart at 1 under an epoch no client has seen.

Rollbacks. The head also holds ``run``, the ``run_id`` (``INFO server``) of the Redis
process that last wrote it. A Redis process that finds a head written by another
process (it restarted and loaded an RDB or AOF, a replica was promoted, a slot was
migrated to it) cannot know whether the head is the latest: an RDB a moment old, or an
AOF ``everysec`` after a power cut, or a replica that had not received the last writes,
hold an *older* head, whose next offsets were given out already, for other data. So it
renames the channel to a new epoch (the candidate, as for a lost head; same offsets,
same stream) before anything else touches it, and stamps the head as its own. No
position of the old epoch is given out again, whatever the length of the rollback, and
every client resuming from one is told ``recovered: false``. The ``run_id`` is the last
argument of those scripts (``RedisScript.stamps``): the runner (``redis_runner``) reads
it with ``INFO server`` on each connection when it connects (again at every reconnect,
before the connection carries a script), on one Redis and on each cluster node alike,
so a script carries the ``run_id`` of the process it is sent to, for free; a restart or
a failover breaks every connection. A call a cluster node redirects is resent through
redis-py's cluster client, which picks the node: its argument is empty and the script
asks ``INFO server`` itself (about 12 us more of Redis CPU, ``benchmarks/RESULTS.md``).
A head without ``run`` (written by an earlier tidings) is adopted as it is. Under
``trust_restarts`` every head is stamped ``TRUSTED_STAMP``, whatever the process: the
operator vouches that Redis never comes back older. A rollback that keeps the process
(``DEBUG RELOAD``) is caught only by a node that had seen a later position: the publish
script takes the node's own last position as a floor.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Final

import msgspec

from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Publication

DEFAULT_PREFIX: Final = "tidings"
# The stamp of every head under ``trust_restarts``: never another process's run_id.
TRUSTED_STAMP: Final = b"trusted"
MAX_CALLS_PER_PIPELINE: Final = 256
MAX_PIPELINES_IN_FLIGHT: Final = 8
MAX_CLUSTER_CALLS_IN_FLIGHT: Final = 64

# Each script's KEYS, in this order: head, history, key-offsets, key-times.
_ENSURE_HEAD: Final = """
local head = KEYS[1]
local run = ARGV[#ARGV]
if run == '' then
  run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
local stored = redis.call('HMGET', head, 'epoch', 'run')
local epoch = stored[1]
local created = false
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSET', head, 'epoch', epoch, 'offset', 0, 'run', run)
  created = true
elseif stored[2] ~= run then
  if stored[2] then
    -- written by another Redis process: maybe older than what was given out
    epoch = ARGV[1]
    redis.call('HSET', head, 'epoch', epoch, 'run', run)
  else
    redis.call('HSET', head, 'run', run)
  end
end
"""

# One or more publications, each with 4 KEYS (as every script) and 13 ARGV: candidate
# epoch, body, ts, key ('' for none), history size, history ttl ms, dedupe window ms,
# dedupe max keys, topic, PUBLISH or SPUBLISH, channel, and the floor: the epoch and
# offset of the last publication the calling node delivered ('' and 0 for none); a head
# of that epoch behind the floor was rolled back in place. Then the stamp, once.
# Returns {epoch, offset, 1 if the key was a duplicate else 0} for each, in order, flat.
# Several in one call share the cost of a script call (the runner merges the publishes
# of a pipeline: ``PUBLISH.keys_per_call``); each is as atomic as one alone, and they
# are made in the order given.
PUBLISH_SOURCE: Final = """
local run = ARGV[#ARGV]
if run == '' then
  run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
end
local function publish(K, A)
  local head = KEYS[K + 1]
  local stored = redis.call('HMGET', head, 'epoch', 'run', 'offset')
  local epoch = stored[1]
  local last = tonumber(stored[3] or '0')
  if not epoch then
    epoch = ARGV[A + 1]
    redis.call('DEL', KEYS[K + 2], KEYS[K + 3], KEYS[K + 4])
    redis.call('HSET', head, 'epoch', epoch, 'offset', 0, 'run', run)
    last = 0
  elseif stored[2] ~= run then
    if stored[2] then
      -- written by another Redis process: maybe older than what was given out
      epoch = ARGV[A + 1]
      redis.call('HSET', head, 'epoch', epoch, 'run', run)
    else
      redis.call('HSET', head, 'run', run)
    end
  end
  if ARGV[A + 12] == epoch and last < tonumber(ARGV[A + 13]) then
    epoch = ARGV[A + 1]
    redis.call('HSET', head, 'epoch', epoch)
  end
  local body, ts, key = ARGV[A + 2], tonumber(ARGV[A + 3]), ARGV[A + 4]
  local size, ttl_ms = tonumber(ARGV[A + 5]), tonumber(ARGV[A + 6])
  local window_ms, max_keys = tonumber(ARGV[A + 7]), tonumber(ARGV[A + 8])
  local key_offsets, key_times = KEYS[K + 3], KEYS[K + 4]
  if key ~= '' then
    local seen = redis.call('ZSCORE', key_times, key)
    if seen and tonumber(seen) >= ts - window_ms then
      local original = redis.call('HGET', key_offsets, key)
      if original then
        return epoch, tonumber(original), 1
      end
    end
  end
  local offset = redis.call('HINCRBY', head, 'offset', 1)
  if offset == 1 then
    -- a head created by a reader expires unless published to; now it must stay
    redis.call('PERSIST', head)
  end
  if size > 0 then
    redis.call('XADD', KEYS[K + 2], 'MAXLEN', size, offset .. '-0', 'p', body)
    redis.call('PEXPIRE', KEYS[K + 2], ttl_ms)
  end
  if key ~= '' then
    redis.call('HSET', key_offsets, key, offset)
    redis.call('ZADD', key_times, ts, key)
    local old = redis.call('ZRANGEBYSCORE', key_times, '-inf', '(' .. (ts - window_ms),
                           'LIMIT', 0, 100)
    if #old > 0 then
      redis.call('HDEL', key_offsets, unpack(old))
      redis.call('ZREM', key_times, unpack(old))
    end
    local excess = redis.call('ZCARD', key_times) - max_keys
    if excess > 0 then
      local oldest = redis.call('ZRANGE', key_times, 0, math.min(excess, 100) - 1)
      redis.call('HDEL', key_offsets, unpack(oldest))
      redis.call('ZREM', key_times, unpack(oldest))
    end
    redis.call('PEXPIRE', key_offsets, window_ms)
    redis.call('PEXPIRE', key_times, window_ms)
  end
  redis.call(ARGV[A + 10], ARGV[A + 9], '{"channel":"' .. ARGV[A + 11] .. '","epoch":"'
             .. epoch .. '","offset":' .. offset .. ',' .. string.sub(body, 2))
  return epoch, offset, 0
end
local replies = {}
for i = 0, #KEYS / 4 - 1 do
  local epoch, offset, duplicate = publish(i * 4, i * 13)
  replies[i * 3 + 1], replies[i * 3 + 2], replies[i * 3 + 3] = epoch, offset, duplicate
end
return replies
"""

# ARGV: candidate epoch, ttl ms of a head created here, mode ('head', 'after' or
# 'latest'), since epoch, since offset, count (>= 1).
# Returns {epoch, offset, entries}: entries after the since offset (if of this epoch),
# oldest first, or the latest ones, newest first.
READ_SOURCE: Final = (
    _ENSURE_HEAD
    + """
if created then
  -- an empty head, so a reader's (epoch, 0) stays valid; it expires unless published to
  redis.call('PEXPIRE', head, ARGV[2])
  return {epoch, 0, {}}
end
local offset = tonumber(redis.call('HGET', head, 'offset'))
if offset == 0 then
  if redis.call('PTTL', head) > 0 then
    redis.call('PEXPIRE', head, ARGV[2])
  end
  return {epoch, 0, {}}
end
local mode = ARGV[3]
local entries = {}
if mode == 'after' then
  local since = tonumber(ARGV[5])
  if ARGV[4] == epoch and since < offset then
    entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', ARGV[6])
  end
elseif mode == 'latest' then
  entries = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[6])
end
return {epoch, offset, entries}
"""
)

# ARGV: the epoch a node delivered, the offset it delivered up to, a new epoch.
# When the head is of that epoch but behind that offset, Redis came back from an older
# snapshot: offsets past its head were given out already, with other data, and would be
# given out again. What Redis holds is one consistent history still: rename it (same
# offsets, same stream) so no position of the old epoch reads into it.
# Returns {epoch, offset}.
RESET_SOURCE: Final = """
local head = KEYS[1]
local epoch = redis.call('HGET', head, 'epoch')
local offset = tonumber(redis.call('HGET', head, 'offset') or '0')
if epoch == ARGV[1] and offset < tonumber(ARGV[2]) then
  redis.call('HSET', head, 'epoch', ARGV[3])
  return {ARGV[3], offset}
end
return {epoch or '', offset}
"""


@dataclass(frozen=True, slots=True)
class RedisScript:
    """A Lua script and its SHA1, as EVALSHA wants it."""

    name: str
    source: str
    sha: str
    stamps: bool = False  # takes the Redis process's run_id as its last argument
    # Calls that may share one script call, their KEYS and ARGV one after the other
    # (the stamp once, last): how many replies each has in the flat reply; 0 if none.
    replies_per_call: int = 0

    @classmethod
    def of(
        cls, name: str, source: str, *, stamps: bool = False, replies_per_call: int = 0
    ) -> RedisScript:
        """Return the script ``source`` named ``name`` (for logs); with ``stamps``, the
        runner appends the ``run_id`` of the Redis process it runs in (or ``""``). With
        ``replies_per_call``, calls of it may be merged into one (see the field)."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        return cls(name, source, sha, stamps, replies_per_call)


PUBLISH: Final = RedisScript.of("publish", PUBLISH_SOURCE, stamps=True, replies_per_call=3)
READ: Final = RedisScript.of("read", READ_SOURCE, stamps=True)
RESET: Final = RedisScript.of("reset", RESET_SOURCE)


@dataclass(frozen=True, slots=True)
class ChannelKeys:
    """The Redis keys of one channel, in the order every script takes them."""

    head: str
    history: str
    key_offsets: str
    key_times: str

    @classmethod
    def of(cls, prefix: str, channel: ChannelName) -> ChannelKeys:
        """Return ``channel``'s keys under ``prefix``."""
        base = f"{prefix}:{{{channel}}}"
        return cls(f"{base}:head", f"{base}:history", f"{base}:key-offsets", f"{base}:key-times")

    def as_tuple(self) -> tuple[str, str, str, str]:
        """The keys as KEYS for a script."""
        return (self.head, self.history, self.key_offsets, self.key_times)


def topic_of(prefix: str, db: int, channel: ChannelName) -> str:
    """Return ``channel``'s pub/sub topic. It names the database: pub/sub is not
    per-database in Redis, and two deployments on two databases must not hear each other."""
    return f"{prefix}:{db}:{{{channel}}}"


def channel_of_topic(prefix: str, db: int, topic: str) -> ChannelName | None:
    """Return the channel whose topic is ``topic``, or ``None`` if it is not one of ours."""
    start = f"{prefix}:{db}:{{"
    if not topic.startswith(start) or not topic.endswith("}"):
        return None
    return ChannelName(topic[len(start) : -1])


# -- bodies and publications on the wire --------------------------------------------------


class _Info(msgspec.Struct, frozen=True):
    client: str
    user: str


class _Header(msgspec.Struct, frozen=True, omit_defaults=True):
    ts: int
    key: str | None = None
    info: _Info | None = None


class _Stored(msgspec.Struct, frozen=True):
    ts: int
    data: msgspec.Raw
    key: str | None = None
    info: _Info | None = None


class _Live(msgspec.Struct, frozen=True):
    channel: str
    epoch: str
    offset: int
    ts: int
    data: msgspec.Raw
    key: str | None = None
    info: _Info | None = None


_encode_header = msgspec.json.Encoder().encode
_decode_stored = msgspec.json.Decoder(_Stored).decode
_decode_live = msgspec.json.Decoder(_Live).decode


def encode_body(data: bytes, ts: int, key: str | None, info: ClientInfo | None) -> bytes:
    """Return the body of a publication: its fields but channel, epoch and offset."""
    header = _encode_header(
        _Header(ts, key, None if info is None else _Info(info.client, info.user))
    )
    # ``data`` is already JSON text: spliced in, never re-encoded.
    return b"".join((header[:-1], b',"data":', data, b"}"))


def _info(info: _Info | None) -> ClientInfo | None:
    return None if info is None else ClientInfo(info.client, info.user)


def decode_stored(channel: ChannelName, epoch: str, entry_id: bytes, body: bytes) -> Publication:
    """Rebuild a publication from a history stream entry.

    Raises:
        msgspec.ValidationError: the entry is not a body this module wrote.
        ValueError: the entry id is not ``<offset>-0``.
    """
    stored = _decode_stored(body)
    offset = int(entry_id.partition(b"-")[0])
    return Publication(
        channel, epoch, offset, bytes(stored.data), stored.ts, stored.key, _info(stored.info)
    )


def decode_live(payload: bytes) -> Publication:
    """Rebuild a publication received on a topic.

    Raises:
        msgspec.ValidationError: the payload is not a publication this module wrote.
    """
    live = _decode_live(payload)
    return Publication(
        ChannelName(live.channel),
        live.epoch,
        live.offset,
        bytes(live.data),
        live.ts,
        live.key,
        _info(live.info),
    )
