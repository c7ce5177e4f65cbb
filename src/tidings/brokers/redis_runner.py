"""Sending the Redis broker's scripts (``redis_scripts``): auto-batched pipelines, one per
Redis server, each script stamped with the ``run_id`` of the process it is sent to. The
only I/O is through ``redis.asyncio`` connections, which it writes and reads itself.

Batching. A call is queued, and the queue is flushed on the next turn of the event loop
(or at once when it holds ``MAX_CALLS_PER_PIPELINE``): every script started in the same
loop iteration goes to Redis in one write, one round trip, with at most
``MAX_PIPELINES_IN_FLIGHT`` pipelines in flight per server; calls arriving meanwhile wait
and go together in the next. Each caller's future is settled from its own reply, in
order. A script Redis refuses fails its caller alone; a connection that fails midway
fails exactly the calls of that pipeline still unanswered (they may or may not have run:
the caller's ``BrokerError`` says so), and the next pipeline takes a fresh connection.
In a Redis Cluster the queue is split by the node owning each call's slot (all of a
channel's keys share one slot), one pipeline per node; a call the node redirects
(``MOVED``, ``ASK``) or cannot serve now (``TRYAGAIN``, ``CLUSTERDOWN``) did not run,
and is sent again on its own through redis-py's cluster client, which follows the
redirection and reads the new topology.

Without batching (``[brokers.redis] batch = false``, kept to compare in
``benchmarks/``), each call is its own round trip on its own pooled connection, at most
``MAX_UNBATCHED_IN_FLIGHT`` at once: the classic one-command-per-request client.

Stamps (``redis_scripts``, "Rollbacks"): each connection learns the ``run_id`` of the
Redis process at its other end as it connects (``INFO server``, again at every
reconnect, before it carries a script), and every stamping script sent on it carries
that ``run_id``. A call resent through the cluster client carries ``""``: the script
reads ``INFO server`` itself.
"""

from __future__ import annotations

import asyncio
import functools
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)

from tidings.brokers.redis_scripts import TRUSTED_STAMP, RedisScript

MAX_CALLS_PER_PIPELINE: Final = 256
MAX_PIPELINES_IN_FLIGHT: Final = 8
MAX_UNBATCHED_IN_FLIGHT: Final = 64
# Publishes merged into one script call at most: Redis runs nothing else meanwhile.
MAX_CALLS_PER_SCRIPT: Final = 64
# Errors with which a cluster node refuses a script before running it.
_NOT_RUN_HERE: Final = (AskError, TryAgainError, ClusterDownError)


class ScriptUnanswered(Exception):
    """Redis did not answer a script within the caller's time-out. ``sent`` says whether
    the script was written to Redis (it may have run, or may run once Redis reads it);
    when not, it was dropped and will never be sent."""

    def __init__(self, timeout_s: float, *, sent: bool) -> None:
        state = "it was sent and may have run" if sent else "it was not sent"
        super().__init__(f"no answer within {timeout_s:g} s; {state}")
        self.timeout_s = timeout_s
        self.sent = sent


@dataclass(slots=True)
class _Call:
    script: RedisScript
    keys: tuple[str, ...]
    args: tuple[str | bytes | int, ...]
    future: asyncio.Future[Any]
    sent: bool = False  # written to a connection: from here on it may run


@dataclass(slots=True)
class _Server:
    """The queue and the pipelines in flight of one Redis server (a node in a cluster)."""

    node: ClusterNode | None  # None: the one Redis, through the client's pool
    queue: list[_Call]
    in_flight: int = 0


class ScriptRunner:
    """Runs scripts in auto-batched pipelines; see the module docstring.

    EVALSHA first, EVAL when Redis does not know the script (it forgets them on restart;
    EVAL runs the script and caches it again).
    """

    def __init__(
        self, client: Redis | RedisCluster, *, trust_restarts: bool = False, batch: bool = True
    ) -> None:
        """Run scripts on ``client``. With ``trust_restarts`` the scripts are given one
        stamp for every Redis process, so no head is ever found foreign (the operator
        vouches that Redis never comes back older). ``batch`` false sends each script
        on its own (see the module docstring)."""
        self._client = client
        # Asked once: isinstance against redis-py's cluster class is slow (a protocol).
        self._cluster = isinstance(client, RedisCluster)
        self._trusted: bytes | None = TRUSTED_STAMP if trust_restarts else None
        self._calls_per_pipeline = MAX_CALLS_PER_PIPELINE if batch else 1
        self._pipelines_in_flight = MAX_PIPELINES_IN_FLIGHT if batch else MAX_UNBATCHED_IN_FLIGHT
        # The run_id of the Redis process at the other end of each connection, learnt
        # when it connects (see the module docstring).
        self._run_ids: weakref.WeakKeyDictionary[AbstractConnection, bytes] = (
            weakref.WeakKeyDictionary()
        )
        self._unrouted: list[_Call] = []  # queued, not yet given to a server
        self._servers: dict[str, _Server] = {}
        self._flush_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(
        self,
        script: RedisScript,
        keys: Sequence[str],
        args: Sequence[str | bytes | int],
        *,
        timeout_s: float | None = None,
    ) -> Any:
        """Run ``script`` and return its reply, giving up after ``timeout_s`` if given.

        Raises:
            RedisError, OSError: Redis failed or could not be reached.
            ScriptUnanswered: no reply within ``timeout_s``. A call given up on before
                it was written to Redis is dropped: it is never sent.
        """
        loop = asyncio.get_running_loop()
        call = _Call(script, tuple(keys), tuple(args), loop.create_future())
        self._unrouted.append(call)
        if len(self._unrouted) >= self._calls_per_pipeline:
            self._flush()  # a full batch need not wait for the next turn
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        if timeout_s is None:
            return await call.future
        # One timer, no cancellation scope: the cheapest time-out per call. A call given
        # up on before its pipeline was written is skipped by it: never sent.
        timer = loop.call_later(timeout_s, _give_up, call, timeout_s)
        try:
            return await call.future
        finally:
            timer.cancel()

    async def close(self) -> None:
        """Stop the pipelines in flight; their callers get ``CancelledError``."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for call in self._unrouted:
            call.future.cancel()
        self._unrouted.clear()
        for server in self._servers.values():
            for call in server.queue:
                call.future.cancel()
        self._servers.clear()

    # -- batching ----------------------------------------------------------------------

    def _flush(self) -> None:
        self._flush_scheduled = False
        calls, self._unrouted = self._unrouted, []
        for call in calls:
            if not call.future.done():  # given up on already: never sent
                self._server_of(call).queue.append(call)
        for server in self._servers.values():
            self._start_pipelines(server)

    def _server_of(self, call: _Call) -> _Server:
        if self._cluster:
            client = cast(RedisCluster, self._client)  # checked once, in __init__
            try:
                node = client.nodes_manager.get_node_from_slot(client.keyslot(call.keys[0]))
            except (RedisClusterException, IndexError, KeyError):
                node = None  # topology unknown yet: the cluster client finds it
            name = "" if node is None else node.name
            server = self._servers.get(name)
            if server is None:
                server = self._servers[name] = _Server(node, [])
            else:
                server.node = node  # the client may have replaced it (topology read again)
            return server
        server = self._servers.get("")
        if server is None:
            server = self._servers[""] = _Server(None, [])
        return server

    def _start_pipelines(self, server: _Server) -> None:
        loop = asyncio.get_running_loop()
        while server.queue and server.in_flight < self._pipelines_in_flight:
            calls = server.queue[: self._calls_per_pipeline]
            del server.queue[: self._calls_per_pipeline]
            server.in_flight += 1
            task = loop.create_task(self._run_pipeline(server, calls))
            self._tasks.add(task)  # a reference, so the task is not collected midway
            task.add_done_callback(functools.partial(self._pipeline_done, server))

    def _pipeline_done(self, server: _Server, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        server.in_flight -= 1
        if server.queue:
            self._start_pipelines(server)

    async def _run_pipeline(self, server: _Server, calls: list[_Call]) -> None:
        try:
            if self._cluster:
                if server.node is None:
                    await self._run_each_through_cluster(calls)
                else:
                    await self._run_on_node(server.node, calls)
            else:
                await self._run_on_pool(calls)
        except BaseException as exc:  # handed to every caller still waiting
            _fail(calls, exc)
            if not isinstance(exc, Exception):
                raise

    async def _run_on_pool(self, calls: list[_Call]) -> None:
        assert isinstance(self._client, Redis)
        pool = self._client.connection_pool
        connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated
        try:
            await self._exchange_all(connection, calls, await self._run_id(connection))
        finally:
            await pool.release(connection)

    async def _run_on_node(self, node: ClusterNode, calls: list[_Call]) -> None:
        connection = node.acquire_connection()
        try:
            try:
                if not connection.is_connected:
                    await connection.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
                run_id = await self._run_id(connection)
            except (RedisConnectionError, OSError):
                # Nothing was sent. The node may be gone (failed over): the cluster
                # client reads the topology again and finds the slots' new owners.
                await self._run_each_through_cluster(calls)
                return
            await self._exchange_all(connection, calls, run_id)
        except BaseException:
            await connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            node.release(connection)

    async def _exchange_all(
        self, connection: AbstractConnection, calls: list[_Call], run_id: bytes
    ) -> None:
        """Send ``calls`` on ``connection`` and settle them; NOSCRIPT ones again with EVAL,
        redirected ones (in a cluster) through the cluster client."""
        # A caller that gave up while the connection was made is not sent: its answer
        # said so (``ScriptUnanswered.sent``).
        calls = [call for call in calls if not call.future.done()]
        for call in calls:
            call.sent = True
        commands = _commands(calls, self._cluster)
        unknown, elsewhere = (
            await _exchange(connection, commands, run_id, by_sha=True) if calls else ([], [])
        )
        unknown = [[c for c in command if not c.future.done()] for command in unknown]
        unknown = [command for command in unknown if command]
        if unknown:
            # NOSCRIPT: those did not run. EVAL runs them and caches the script.
            _, moved = await _exchange(connection, unknown, run_id, by_sha=False)
            elsewhere += moved
        if elsewhere:
            await self._run_each_through_cluster(elsewhere)

    async def _run_each_through_cluster(self, calls: list[_Call]) -> None:
        """Send each call on its own through redis-py's cluster client, which routes it,
        follows redirections and refreshes the topology; the script reads its stamp."""
        client = self._client
        assert isinstance(client, RedisCluster)

        async def one(call: _Call) -> None:
            args = (*call.args, self._trusted or b"") if call.script.stamps else call.args
            keys, script = call.keys, call.script
            try:
                try:
                    reply = await client.evalsha(script.sha, len(keys), *keys, *args)
                except NoScriptError:
                    reply = await client.eval(script.source, len(keys), *keys, *args)
            except Exception as exc:
                if not call.future.done():
                    call.future.set_exception(exc)
                return
            if not call.future.done():
                call.future.set_result(reply)

        pending = [call for call in calls if not call.future.done()]
        for call in pending:
            call.sent = True
        await asyncio.gather(*(one(call) for call in pending))

    # -- stamps ---------------------------------------------------------------------------

    async def _run_id(self, connection: AbstractConnection) -> bytes:
        """The stamp for scripts sent on ``connection`` (connected)."""
        if self._trusted is not None:
            return self._trusted
        run_id = self._run_ids.get(connection)
        if run_id is None:
            # Learnt now, and again by redis-py after every reconnect.
            connection.register_connect_callback(self._learn_run_id)  # type: ignore[no-untyped-call]  # unannotated in redis-py
            await self._learn_run_id(connection)
            run_id = self._run_ids[connection]
        return run_id

    async def _learn_run_id(self, connection: AbstractConnection) -> None:
        """Read the run_id of the Redis process ``connection`` is connected to. Called
        by redis-py after every (re)connect, before the connection carries anything."""
        await connection.send_command("INFO", "server", check_health=False)
        info = await connection.read_response()
        found = re.search(rb"run_id:([0-9a-f]+)", info if isinstance(info, bytes) else b"")
        if found is None:
            raise ResponseError(
                "INFO server names no run_id, which tidings needs to detect a Redis that "
                "came back older; if this server never does, add ?trust_restarts=yes"
            )
        self._run_ids[connection] = found.group(1)


def _give_up(call: _Call, timeout_s: float) -> None:
    if not call.future.done():
        call.future.set_exception(ScriptUnanswered(timeout_s, sent=call.sent))


def _fail(calls: Sequence[_Call], exc: BaseException) -> None:
    for call in calls:
        if call.future.done():
            continue
        if isinstance(exc, Exception):
            call.future.set_exception(exc)
        else:
            call.future.cancel()


def _commands(calls: Sequence[_Call], cluster: bool) -> list[list[_Call]]:
    """Group ``calls`` into commands, in order: calls of a script that takes several at
    once share one (up to ``MAX_CALLS_PER_SCRIPT``; in a cluster only those of one slot,
    whose keys one node holds); any other call is a command alone."""
    commands: list[list[_Call]] = []
    open_by_kind: dict[tuple[str, int], list[_Call]] = {}
    for call in calls:
        if not call.script.replies_per_call:
            commands.append([call])
            continue
        kind = (call.script.sha, key_slot(call.keys[0].encode()) if cluster else 0)
        command = open_by_kind.get(kind)
        if command is None or len(command) >= MAX_CALLS_PER_SCRIPT:
            command = open_by_kind[kind] = []
            commands.append(command)
        command.append(call)
    return commands


async def _exchange(
    connection: AbstractConnection,
    commands: Sequence[list[_Call]],
    run_id: bytes,
    *,
    by_sha: bool,
) -> tuple[list[list[_Call]], list[_Call]]:
    """Send ``commands`` in one write (a pipeline) and settle each call with its reply,
    in order; return the commands Redis did not run because it did not know the script,
    and the calls a cluster node did not run because they belong elsewhere (or not now).

    Commands are packed here rather than by redis-py: its generic packing was most of
    the client's time per publish (``benchmarks/brokers.py``).
    """
    if not connection.is_connected:
        # redis-py would reconnect while sending, to a process whose run_id the packed
        # calls do not carry: fail them instead (a publish may always fail).
        raise ConnectionError("the connection to Redis was lost")
    await connection.send_packed_command(
        b"".join([_pack(command, run_id, by_sha=by_sha) for command in commands]),
        check_health=False,
    )
    unknown: list[list[_Call]] = []
    elsewhere: list[_Call] = []
    for command in commands:
        try:
            reply = await connection.read_response()
        except NoScriptError:
            unknown.append(command)
            continue
        except _NOT_RUN_HERE:
            elsewhere += command
            continue
        except ResponseError as error:  # these calls failed; the connection is fine
            _fail(command, error)
            continue
        width = command[0].script.replies_per_call
        for index, call in enumerate(command):
            if not call.future.done():
                call.future.set_result(
                    reply[index * width : (index + 1) * width] if width else reply
                )
    return unknown, elsewhere


# The start of each command, by script, EVALSHA or EVAL, and number of keys and args.
_heads: dict[tuple[str, bool, int, int], bytes] = {}


def _pack(command: Sequence[_Call], run_id: bytes, *, by_sha: bool) -> bytes:
    """Return ``command`` (one call, or several of a script that takes several at once)
    as an EVALSHA (or EVAL) command in RESP."""
    script = command[0].script
    key_count = sum(len(call.keys) for call in command)
    arg_count = sum(len(call.args) for call in command)
    shape = (script.sha, by_sha, key_count, arg_count)
    head = _heads.get(shape)
    if head is None:
        count = 3 + key_count + arg_count + (1 if script.stamps else 0)
        fixed = [
            b"EVALSHA" if by_sha else b"EVAL",
            (script.sha if by_sha else script.source).encode(),
            b"%d" % key_count,
        ]
        if len(_heads) >= _MAX_CACHED_BULKS:
            _heads.clear()
        head = _heads[shape] = b"*%d\r\n" % count + b"".join(map(_bulk, fixed))
    packed = [head]
    for call in command:
        packed += map(_cached_bulk, call.keys)
    for call in command:
        packed += [
            _bulk(value) if isinstance(value, bytes) else _cached_bulk(value) for value in call.args
        ]
    if script.stamps:
        packed.append(_bulk(run_id))
    return b"".join(packed)


def _bulk(part: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(part), part)


# Keys, topics, channel names and settings recur from call to call: their RESP is kept,
# up to ``_MAX_CACHED_BULKS`` (then forgotten at once, so memory stays bounded).
_MAX_CACHED_BULKS: Final = 4096
_bulks: dict[str | int, bytes] = {}


def _cached_bulk(value: str | int) -> bytes:
    packed = _bulks.get(value)
    if packed is None:
        if len(_bulks) >= _MAX_CACHED_BULKS:
            _bulks.clear()
        packed = _bulks[value] = _bulk(value.encode() if isinstance(value, str) else b"%d" % value)
    return packed
