"""The NATS broker: many stateless nodes share channels through NATS with JetStream.

Network I/O with ``nats-py``. JetStream is the truth. Every channel is one subject of
one history stream (``nats_stream``: why one stream, what a stored body holds, where
epochs come from; ``nats_subjects``: how a channel name becomes a subject token).
This module connects, reconnects and wires the parts: ``nats_log`` publishes and reads
history, ``nats_keys`` holds idempotency keys, ``nats_live`` follows each subscribed
channel, ``nats_presence`` keeps presence, ``nats_target`` reads the URL and settings.

Publishing (gap-free offsets by optimistic concurrency). A publish reads the channel's
head (its last stored message: epoch, offset, stream sequence), and publishes offset + 1
with ``Nats-Expected-Last-Subject-Sequence`` set to the head's sequence: the stream
stores it only if no other publication of the channel came in between, and otherwise
answers "wrong last sequence", and the publisher reads the head again and retries. So
publishers on any number of nodes yield offsets 1..N, each once, and the stream's order
is the offset order. Within one node, publishes of a channel take turns (a lock per
channel, with the head of the last one kept), so a node never races itself: one
request per publication, and conflicts only between nodes. The other scheme measured,
a counter in a KV bucket taken before publishing, was slower and can leave holes (a
node dying between taking an offset and storing it): docs/brokers/nats.md.

Idempotency. Every publish carries a ``Nats-Msg-Id``, kept across its retries, so a
retry after a lost answer is recognised by the stream (``duplicate``) instead of stored
twice. With an idempotency key the id is derived from channel and key
(``nats_subjects.key_message_id``): any node publishing the key again gets the
original's sequence from JetStream's duplicate window, and returns the original's
position with ``duplicate=True``, unless tidings' own window (judged with this node's
clock on the original's timestamp) let it go; then the id becomes a successor that
every node derives alike, and the key is published anew.

Delivery. The stream republishes each stored message on the channel's live subject;
a node subscribes, with core NATS, to the live subjects of the channels its hub has
subscribers in. Each channel's ``_ChannelState`` keeps ``last``, the position of the
last publication handed to the hub, and judges each arrival with
``core.catchup.decide_catch_up``: the next one is delivered, a repeat dropped, and a
hole (or a new epoch) makes the channel *sync*: live arrivals queue while history after
``last`` is read and delivered, then the queue is drained by the same rule
(``nats_live``).

A lost connection. nats-py reconnects (and subscribes again) by itself; from the loss
until every subscribed channel has been synced from history this node is not ready
(``is_ready`` false), live arrivals queue, and a publish fails at once with
``BrokerUnavailable`` (nothing sent). A publish whose answer does not come within
``publish_timeout_s`` raises ``BrokerError`` (it may have been stored: retry with the
same key). Never a success for a publication the stream did not store.

Presence (``nats_presence``) is a key-value bucket with an age limit; node commands
travel on one core subject (``<prefix>.control``), as frames of ``node_commands``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
from collections.abc import Mapping
from typing import Final

from nats.aio.client import Client
from nats.aio.msg import Msg

from tidings.brokers.base import (
    HistoryRead,
    NodeCommand,
    NodeCommandHandler,
    PublicationHandler,
    PublishResult,
)
from tidings.brokers.nats_keys import KeyIndex
from tidings.brokers.nats_live import LiveChannel, retry_backoff
from tidings.brokers.nats_log import ChannelLog
from tidings.brokers.nats_presence import (
    PRESENCE_HEADER,
    PRESENCE_LIFETIME_S,
    PRESENCE_REFRESH_S,
    NatsPresence,
)
from tidings.brokers.nats_stream import (
    HistoryStream,
    StreamSettings,
    decode_body,
)
from tidings.brokers.nats_subjects import control_subject, live_subject
from tidings.brokers.nats_target import NatsTarget
from tidings.brokers.node_commands import NodeCommands
from tidings.clock import Clock, SystemClock
from tidings.core.channel import ChannelName
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.core.publication import ClientInfo, Position
from tidings.errors import BrokerError, BrokerUnavailable, ConfigError

# NatsTarget is nats_target's, offered here too: callers read broker URLs with it.
__all__ = ["NatsBroker", "NatsTarget"]

logger = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S: Final = 1.5
PROBE_TIMEOUT_S: Final = 1.0
RECONNECT_WAIT_S: Final = 0.25
PING_INTERVAL_S: Final = 2.0
FIRST_CONNECT_WAIT_S: Final = 2.0


class NatsBroker:
    """A broker shared by many nodes through NATS JetStream; see the module docstring."""

    def __init__(
        self,
        url: str,
        namespaces: Namespaces,
        *,
        clock: Clock | None = None,
        dedupe: DedupeOptions | None = None,
        publish_timeout_s: float = PUBLISH_TIMEOUT_S,
        node_id: str | None = None,
        options: Mapping[str, object] | None = None,
        presence_lifetime_s: float = PRESENCE_LIFETIME_S,
        presence_refresh_s: float = PRESENCE_REFRESH_S,
        ping_interval_s: float = PING_INTERVAL_S,
    ) -> None:
        """Prepare a broker for ``url``; nothing connects before ``start``.

        ``options`` is the ``[brokers.nats]`` table (``FILE_SETTINGS``); the URL's query
        wins. ``node_id`` names this node in presence keys and node commands (random if
        not given). A client's presence entry outlives its node by at most
        ``presence_lifetime_s``; each node renews its entries every
        ``presence_refresh_s``. A connection that answers no PING for two
        ``ping_interval_s`` is taken as lost (a silent network).

        Raises:
            ConfigError: the URL or ``options`` is not one this broker reads.
        """
        self._target = NatsTarget.parse(url, options)
        self._display_url = ",".join(s.rpartition("@")[2] for s in self._target.servers)
        self._namespaces = namespaces
        self._clock = clock or SystemClock()
        self._dedupe = dedupe or DedupeOptions()
        self._publish_timeout_s = publish_timeout_s
        self.node_id = node_id or secrets.token_hex(8)
        self._prefix = self._target.prefix
        sizes = [options.history.size for _, options in namespaces.items()]
        self._settings = StreamSettings(
            self._prefix,
            self._target.replicas,
            self._target.storage,
            max([1, *sizes]),  # at least 1: the last message is the channel's head
        )
        try:
            self._presence = NatsPresence(
                self._prefix,
                self.node_id,
                replicas=self._target.replicas,
                lifetime_s=presence_lifetime_s,
                refresh_s=presence_refresh_s,
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._control = NodeCommands(self.node_id)
        self._keys = KeyIndex(
            self._prefix, replicas=self._target.replicas, window_ms=self._dedupe.window_ms
        )
        self._log = ChannelLog(
            self._connected_stream,
            self._keys,
            namespaces,
            prefix=self._prefix,
            clock=self._clock,
            dedupe=self._dedupe,
            publish_timeout_s=publish_timeout_s,
        )
        self._client: Client | None = None
        self._stream: HistoryStream | None = None
        self._on_publication: PublicationHandler | None = None
        self._live: dict[ChannelName, LiveChannel] = {}
        self._healthy = False
        self._closed = False
        self._background: asyncio.Task[None] | None = None
        self._ping_interval_s = ping_interval_s
        self._debug = logger.isEnabledFor(logging.DEBUG)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, on_publication: PublicationHandler) -> None:
        """Connect and start delivering; if NATS cannot be reached now, keep trying in
        the background (not ready until then).

        Raises:
            BrokerError: the broker was closed.
        """
        if self._closed:
            raise BrokerError("the NATS broker was closed; make a new one")
        self._on_publication = on_publication
        if self._client is not None or self._background is not None:
            return
        self._run_in_background(self._connect_forever(), "connect")
        task = self._background
        assert task is not None
        # Ready at once when NATS answers now; otherwise connecting goes on meanwhile.
        await asyncio.wait([task], timeout=FIRST_CONNECT_WAIT_S)
        if not self._healthy:
            logger.warning(
                "NATS at %s is not reachable yet; connecting in the background",
                self._display_url,
            )

    async def _connect(self) -> None:
        client = Client()
        self._client = client  # before connecting: ``close`` stops its retries
        await client.connect(
            servers=list(self._target.servers),
            name=f"tidings-{self.node_id}",
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=RECONNECT_WAIT_S,  # type: ignore[arg-type]  # as ping_interval
            connect_timeout=2,
            # nats-py annotates whole seconds, and waits on any float just as well.
            ping_interval=self._ping_interval_s,  # type: ignore[arg-type]
            max_outstanding_pings=2,
            disconnected_cb=self._disconnected,
            reconnected_cb=self._reconnected,
            error_cb=self._error,
        )
        self._stream = HistoryStream(client, self._settings)
        version = client.connected_server_version
        if self._target.replicas > 1 and (version.major, version.minor) < (2, 10):
            # Found by this broker's cluster test: 2.9 lets through concurrent publishes
            # that expected the same last sequence of a replicated stream's subject.
            logger.warning(
                "nats-server %s does not enforce Nats-Expected-Last-Subject-Sequence on a "
                "replicated stream under concurrent publishes: offsets may repeat. Use "
                "nats-server 2.10 or later for replicas > 1",
                version,
            )
        await client.subscribe(control_subject(self._prefix), cb=self._on_control)
        await self._prepare()
        self._healthy = True

    async def _prepare(self) -> None:
        """Make (or find) the stream and the bucket: after a connect and a reconnect."""
        assert self._stream is not None
        self._log.epoch = await self._stream.ensure()
        client = self._client
        assert client is not None
        await self._keys.start(client)
        await self._presence.start(client)

    async def _connect_forever(self) -> None:
        delay = retry_backoff()
        while not self._closed:
            try:
                await self._connect()
            except Exception as exc:  # the task boundary: whatever failed, try again
                if self._client is not None:
                    with contextlib.suppress(Exception):
                        await self._client.close()
                    self._client = None
                wait_s = delay.next_delay_s()
                logger.warning("connecting to NATS failed (%s); next try in %.2f s", exc, wait_s)
                await asyncio.sleep(wait_s)
                continue
            logger.info("NATS broker connected to %s", self._display_url)
            return

    def _run_in_background(self, work: object, what: str) -> None:
        assert asyncio.iscoroutine(work)
        task = asyncio.get_running_loop().create_task(work, name=f"tidings nats {what}")
        self._background = task
        task.add_done_callback(lambda _: setattr(self, "_background", None))

    async def close(self) -> None:
        """Stop delivering and close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._healthy = False
        self._on_publication = None
        tasks = [] if self._background is None else [self._background]
        tasks += [live.sync_task for live in self._live.values() if live.sync_task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._presence.close()
        for live in self._live.values():
            live.drop()
            if not live.ready.done():
                live.ready.cancel()
        self._live.clear()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
        logger.info("NATS broker closed")

    async def is_ready(self) -> bool:
        """Whether NATS answers now (a round trip within a second) and every subscribed
        channel is subscribed and synced."""
        client = self._client
        if self._closed or not self._healthy or client is None or not client.is_connected:
            return False
        try:
            await client.flush(timeout=_whole_seconds(PROBE_TIMEOUT_S))
        except Exception:  # no answer in time, or the connection went: not ready
            return False
        return self._healthy

    # -- publishing and history (``nats_log``) ---------------------------------------

    def _connected_stream(self, what: str) -> HistoryStream:
        client, stream = self._client, self._stream
        if self._closed or client is None or stream is None or not client.is_connected:
            raise BrokerUnavailable(f"{what} failed: NATS is not reachable now; nothing was sent")
        return stream

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish ``data`` in ``channel`` (see the module docstring).

        Raises:
            BrokerUnavailable: NATS is not reachable now; nothing was sent.
            BrokerError: NATS failed or did not answer in time; the publication may
                or may not have been made (retry with the same ``key``).
        """
        return await self._log.publish(channel, data, key=key, info=info)

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and history (``Broker.history``).

        Raises:
            BrokerError: NATS failed or is unreachable.
        """
        return await self._log.history(channel, since, limit)

    # -- presence and node commands ----------------------------------------------------

    @property
    def presence_store(self) -> NatsPresence:
        """Presence shared by every node on this NATS (``HasPresenceStore``)."""
        return self._presence

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand node commands, this node's and others', to ``on_command``."""
        self._control.listen(on_command)

    async def send_to_nodes(self, command: NodeCommand) -> int:
        """Handle ``command`` here, then publish it to the other nodes.

        Returns:
            The nodes that renew their key in the presence bucket, this one included
            (core NATS does not count receivers; see ``nats_presence``), at least 1.

        Raises:
            BrokerError: NATS is unreachable; only this node handled it.
        """
        self._control.handle(command)
        client = self._client
        what = "telling the other nodes"
        if self._closed or client is None or not client.is_connected:
            raise BrokerUnavailable(f"{what} failed: NATS is not reachable now")
        try:
            await client.publish(control_subject(self._prefix), self._control.encode(command))
            await client.flush(timeout=_whole_seconds(self._publish_timeout_s))
        except Exception as exc:  # nats-py's time-outs and connection errors
            raise BrokerError(f"{what} failed: {exc!r}") from exc
        try:
            return max(1, await self._presence.count_nodes())
        except BrokerError as exc:  # sent all the same: only the count is unknown
            logger.warning("counting the nodes told failed: %s", exc)
            return 1

    async def _on_control(self, msg: Msg) -> None:
        self._control.receive(msg.data)

    # -- subscriptions (each followed by a ``nats_live.LiveChannel``) ---------------------

    async def subscribe(self, channel: ChannelName) -> None:
        """Deliver ``channel``'s publications to this node; returns once NATS has the
        subscription and this node knows the channel's head.

        Raises:
            BrokerError: NATS is unreachable now (the broker is reconnecting).
        """
        live = self._live.get(channel)
        if live is not None:
            await asyncio.shield(live.ready)
            return
        client = self._client
        if self._closed or not self._healthy or client is None or not client.is_connected:
            raise BrokerError(f"cannot subscribe {channel}: NATS is not reachable now")
        live = LiveChannel(
            channel,
            read_history=self.history,
            deliver=lambda: self._on_publication,
            history_size=self._namespaces.options_for(channel).history.size,
        )
        self._live[channel] = live
        try:

            async def on_message(msg: Msg) -> None:
                self._on_message(live, msg)

            live.sub = await client.subscribe(live_subject(self._prefix, channel), cb=on_message)
            # Once NATS has the subscription, what the head holds is all history's.
            await client.flush(timeout=_whole_seconds(self._publish_timeout_s))
            read = await self.history(channel, limit=0)
        except BaseException as exc:
            await self._drop(live)
            if isinstance(exc, Exception) and not isinstance(exc, BrokerError):
                error = BrokerError(f"subscribing {channel} failed: {exc!r}")
                live.ready.set_exception(error)
                live.ready.exception()  # retrieved: there may be no other waiter
                raise error from exc
            live.ready.cancel()
            raise
        if live.last is None:
            live.last = read.head
        live.ready.set_result(None)

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications to this node; idempotent."""
        live = self._live.get(channel)
        if live is None:
            return
        if not live.ready.done():
            await asyncio.wait([live.ready])
        await self._drop(live)

    async def _drop(self, live: LiveChannel) -> None:
        """Forget ``live``: nothing more is delivered for it."""
        if self._live.get(live.channel) is live:
            del self._live[live.channel]
        live.drop()
        if live.sub is not None:
            with contextlib.suppress(Exception):  # gone with its connection: nothing to undo
                await live.sub.unsubscribe()

    def _on_message(self, live: LiveChannel, msg: Msg) -> None:
        if not live.active:
            return  # unsubscribed meanwhile
        headers = msg.headers or {}
        if PRESENCE_HEADER in headers:
            self._presence.receive(msg)
            return
        try:
            seq = int(headers.get("Nats-Sequence", "0"))
            publication = decode_body(live.channel, msg.data, seq).publication
        except (BrokerError, ValueError):
            logger.error("unreadable publication on %s: %r", msg.subject, msg.data[:200])
            return
        if self._debug:
            logger.debug("received %s at %s", publication.channel, publication.position)
        live.receive(publication)

    # -- a lost connection -----------------------------------------------------------------

    async def _disconnected(self) -> None:
        if self._closed:
            return
        if self._healthy:
            logger.warning("lost the connection to NATS at %s", self._display_url)
        self._healthy = False
        for live in self._live.values():
            live.hold()  # until history filled the gap

    async def _reconnected(self) -> None:
        if self._closed or self._background is not None:
            return
        self._run_in_background(self._recover(), "recovery")

    async def _error(self, exc: Exception) -> None:
        logger.debug("NATS client error: %r", exc)

    async def _recover(self) -> None:
        """After a reconnect (nats-py subscribed again): find the stream, then sync
        every channel before being ready again."""
        delay = retry_backoff()
        while not self._closed:
            try:
                await self._prepare()
                followed = list(self._live.values())
                for live in followed:
                    live.request_sync()
                tasks = [live.sync_task for live in followed if live.sync_task is not None]
                await asyncio.gather(*tasks, return_exceptions=True)
                if not all(live.is_synced for live in followed if live.active):
                    raise BrokerError("some channels are not synced yet")
                await self._presence.restore()
            except Exception as exc:  # the task boundary: whatever failed, try again
                wait_s = delay.next_delay_s()
                logger.warning(
                    "recovering from a NATS reconnect failed (%s); again in %.2f s", exc, wait_s
                )
                await asyncio.sleep(wait_s)
                continue
            self._healthy = True
            logger.info(
                "reconnected to NATS at %s; synced %d channels", self._display_url, len(followed)
            )
            return


def _whole_seconds(seconds: float) -> int:
    """A time-out for nats-py's ``flush``, which takes whole seconds (at least one)."""
    return max(1, math.ceil(seconds))
