"""Presence for the NATS broker (``PresenceStore``): a JetStream key-value bucket whose
entries expire, and presence frames on each channel's live subject. Network I/O through
a ``nats.aio`` client.

Each node owns one key per channel it has clients in, ``<channel token>.<node token>``
in the bucket ``<prefix>-presence``, holding ``{client id: user}`` of its clients
there. Only that node writes it, so a join or leave is one put of the node's current
map, never a read-modify-write race with other nodes. The bucket's age limit
(``lifetime_s``) drops a key its node stopped renewing (killed, cut off); a live node
puts all its keys again every ``refresh_s``. ``presence(channel)`` reads the last value
of every key of the channel with an ephemeral consumer (``last_per_subject``), so the
answer is the bucket's at the time of the call.

Changes travel as frames on the channel's live subject, told apart from publications
(which carry ``Nats-Stream``) by the ``Tidings-Presence`` header; a node ignores its
own. One node sends its frames on one connection, so other nodes hear them in order.

The bucket also counts the nodes: each renews a key ``_.nodes.<node>`` on the same
timer, and empties it when it closes, so ``count_nodes`` tells how many nodes a node
command reached, as far as the bucket knows (a killed node counts until its key ages).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final, Literal

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg

from tidings.brokers.base import PresenceChange, PresenceHandler
from tidings.brokers.nats_stream import request_reply
from tidings.brokers.nats_subjects import (
    live_subject,
    name_of,
    presence_bucket,
    presence_key,
    token_of,
)
from tidings.core.channel import ChannelName
from tidings.errors import BrokerError, BrokerUnavailable

logger = logging.getLogger(__name__)

PRESENCE_LIFETIME_S: Final = 30.0
PRESENCE_REFRESH_S: Final = 10.0
PRESENCE_HEADER: Final = "Tidings-Presence"
READ_TIMEOUT_S: Final = 5.0
READ_BATCH: Final = 1_000
# Node keys are ``_.nodes.<node>``: three tokens, where a channel's presence keys have
# two, so no channel's filter (``<token>.*``) ever matches one.
_NODES: Final = "_.nodes"


class _Frame(msgspec.Struct, frozen=True):
    kind: Literal["join", "leave"]
    node: str
    client: str
    user: str


_encode = msgspec.json.Encoder().encode
_decode_frame = msgspec.json.Decoder(_Frame).decode
_decode_map = msgspec.json.Decoder(dict[str, str]).decode
_NEXT_BATCH: Final = msgspec.json.encode({"batch": READ_BATCH, "no_wait": True})


class _Created(msgspec.Struct, frozen=True):
    name: str = ""
    num_pending: int = 0
    error: dict[str, object] | None = None


_decode_created = msgspec.json.Decoder(_Created).decode


class NatsPresence:
    """This node's side of presence on NATS; see the module docstring."""

    def __init__(
        self,
        prefix: str,
        node: str,
        *,
        replicas: int,
        lifetime_s: float = PRESENCE_LIFETIME_S,
        refresh_s: float = PRESENCE_REFRESH_S,
    ) -> None:
        if refresh_s >= lifetime_s:
            raise ValueError("the presence refresh must be shorter than its lifetime")
        self._prefix = prefix
        self._node = node
        self._replicas = replicas
        self._lifetime_s = lifetime_s
        self._refresh_s = refresh_s
        self._bucket = presence_bucket(prefix)
        self._stream = f"KV_{self._bucket}"
        self._client: Client | None = None
        self._mine: dict[ChannelName, dict[str, str]] = {}
        self._on_change: PresenceHandler | None = None
        self._refresher: asyncio.Task[None] | None = None

    def listen(self, on_change: PresenceHandler) -> None:
        """Hand presence changes made on other nodes to ``on_change`` from now on."""
        self._on_change = on_change

    async def start(self, client: Client) -> None:
        """Make the bucket if missing and start renewing this node's keys.

        Raises:
            BrokerError: the bucket cannot be made.
        """
        self._client = client
        await self.ensure_bucket()
        await self._put_node(alive=True)
        if self._refresher is None:
            self._refresher = asyncio.get_running_loop().create_task(
                self._refresh_forever(), name="tidings nats presence refresh"
            )

    async def ensure_bucket(self) -> None:
        """Make the bucket if missing (again after NATS lost it)."""
        config = {
            "name": self._stream,
            "subjects": [f"$KV.{self._bucket}.>"],
            "max_msgs_per_subject": 1,
            "max_age": int(self._lifetime_s * 1e9),
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "storage": "file",
            "num_replicas": self._replicas,
        }
        reply = await self._request(f"$JS.API.STREAM.CREATE.{self._stream}", _encode(config))
        # Made, or made already by another node (same config, or an older one: kept).
        if b'"error"' in reply and b"already in use" not in reply:
            raise BrokerError(f"making the presence bucket failed: {reply[:200]!r}")

    async def close(self) -> None:
        """Stop renewing and leave the nodes; this node's presence keys expire (or go
        with ``leave``)."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._client is not None and self._client.is_connected:
            with contextlib.suppress(BrokerError):
                await self._put_node(alive=False)
        self._client = None

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> bytes:
        return await request_reply(
            self._client,
            subject,
            payload,
            what="presence",
            timeout_s=READ_TIMEOUT_S,
            headers=headers,
        )

    async def _put(self, channel: ChannelName) -> None:
        clients = self._mine.get(channel, {})
        subject = f"$KV.{self._bucket}.{presence_key(channel, self._node)}"
        reply = await self._request(subject, _encode(clients))
        if b'"error"' in reply:
            raise BrokerError(f"presence of {channel} failed: {reply[:200]!r}")
        if not clients:
            self._mine.pop(channel, None)

    async def _announce(
        self, kind: Literal["join", "leave"], channel: ChannelName, client: str, user: str
    ) -> None:
        nc = self._client
        if nc is None:
            return
        frame = _encode(_Frame(kind, self._node, client, user))
        with contextlib.suppress(Exception):  # best effort, as on Redis: the bucket is the truth
            await nc.publish(
                live_subject(self._prefix, channel), frame, headers={PRESENCE_HEADER: "1"}
            )

    async def join(self, channel: ChannelName, client_id: str, user: str) -> None:
        """List ``client_id`` in ``channel`` and tell other nodes (``PresenceStore.join``)."""
        self._mine.setdefault(channel, {})[client_id] = user
        await self._put(channel)
        await self._announce("join", channel, client_id, user)

    async def leave(self, channel: ChannelName, client_id: str) -> None:
        """Remove ``client_id`` from ``channel`` and tell other nodes; idempotent."""
        clients = self._mine.get(channel)
        if clients is None or client_id not in clients:
            return
        user = clients.pop(client_id)
        await self._put(channel)
        await self._announce("leave", channel, client_id, user)

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return ``{client_id: user}`` in ``channel`` on every node, read now.

        Raises:
            BrokerError: NATS failed.
        """
        users: dict[str, str] = {}
        try:
            for value in await self._last_values(
                f"{token_of(channel)}.*", f"the presence of {channel}"
            ):
                if value:
                    users.update(_decode_map(value))
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BrokerError(f"the presence of {channel} holds an unreadable entry") from exc
        return users

    async def count_nodes(self) -> int:
        """Return how many nodes renew their node key now, this one included.

        Raises:
            BrokerError: NATS failed.
        """
        values = await self._last_values(f"{_NODES}.*", "the nodes")
        return sum(1 for value in values if value)

    async def _last_values(self, keys: str, what: str) -> list[bytes]:
        """Return the last value of every key matching ``keys``, read now: an ephemeral
        pull consumer hands them over batch by batch until JetStream answers that none
        is left."""
        client = self._client
        if client is None or not client.is_connected:
            raise BrokerUnavailable(f"reading {what} failed: NATS is not reachable now")
        config = {
            "ack_policy": "none",
            "deliver_policy": "last_per_subject",
            "filter_subject": f"$KV.{self._bucket}.{keys}",
            "inactive_threshold": 5_000_000_000,
            "mem_storage": True,
        }
        request = {"stream_name": self._stream, "config": config}
        created = _decode_created(
            await self._request(f"$JS.API.CONSUMER.CREATE.{self._stream}", _encode(request))
        )
        if created.error is not None or not created.name:
            raise BrokerError(f"reading {what} failed: {created.error}")
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self._stream}.{created.name}"
        inbox = client.new_inbox()
        received: asyncio.Queue[Msg] = asyncio.Queue()
        sub = await client.subscribe(inbox, cb=received.put)
        values: list[bytes] = []
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                batch_full = True
                while batch_full:
                    await client.publish(next_subject, _NEXT_BATCH, reply=inbox)
                    count = 0
                    while "Status" not in ((msg := await received.get()).headers or {}):
                        count += 1
                        values.append(bytes(msg.data))
                        if count == READ_BATCH:
                            break  # a full batch: ask for the next one
                    batch_full = count == READ_BATCH
        except TimeoutError as exc:
            raise BrokerError(f"reading {what} timed out") from exc
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            with contextlib.suppress(Exception):  # else it goes after its inactivity limit
                await client.publish(f"$JS.API.CONSUMER.DELETE.{self._stream}.{created.name}", b"")
        return values

    def receive(self, msg: Msg) -> None:
        """Hand a presence frame from the live subject to the listener, unless it is ours."""
        try:
            frame = _decode_frame(msg.data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            logger.warning("ignored an unreadable presence frame: %r", msg.data[:200])
            return
        if frame.node == self._node or self._on_change is None:
            return
        token = msg.subject.rpartition(".")[2]
        change = PresenceChange(frame.kind, ChannelName(name_of(token)), frame.client, frame.user)
        try:
            self._on_change(change)
        except Exception:  # a faulty handler must not stop delivery
            logger.exception("presence handler failed on %r", change)

    async def _put_node(self, *, alive: bool) -> None:
        """Renew (or, leaving, empty) this node's key among the nodes."""
        subject = f"$KV.{self._bucket}.{_NODES}.{token_of(self._node)}"
        reply = await self._request(subject, b"1" if alive else b"")
        if b'"error"' in reply:
            raise BrokerError(f"renewing this node's key failed: {reply[:200]!r}")

    async def restore(self) -> None:
        """Put every key of this node again (NATS may have lost them while away)."""
        await self._put_node(alive=True)
        for channel in list(self._mine):
            await self._put(channel)

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self._put_node(alive=True)
            except BrokerError as exc:
                logger.warning("renewing this node's key failed: %s", exc)
                continue
            for channel in list(self._mine):
                try:
                    await self._put(channel)
                except BrokerError as exc:
                    logger.warning("renewing presence in %s failed: %s", channel, exc)
                    break
