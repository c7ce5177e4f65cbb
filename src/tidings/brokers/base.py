"""The roles a backend plays, each a protocol: ``Broker`` (publish, subscribe, history),
``PresenceStore`` (who is in a channel, on every node) and ``NodeControl`` (commands
between nodes); and the values they take and return.

No I/O here. A broker owns the truth about channels: it sequences publications, keeps
history and carries each publication to the nodes whose hubs subscribed its channel.
Presence and node commands are roles of their own because backends differ most there
(a Redis hash with expiring entries, a PostgreSQL table, a NATS key-value bucket): a
broker that plays them exposes them (``presence_store``, ``NodeControl``'s methods), and
the hub and the server take each role separately.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from tidings.core.channel import ChannelName
from tidings.core.dedupe import RememberedKey
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Recovery

PublicationHandler = Callable[[Publication], None]


@dataclass(frozen=True, slots=True)
class PresenceChange:
    """A client joined or left a channel on another node."""

    kind: Literal["join", "leave"]
    channel: ChannelName
    client: str
    user: str


PresenceHandler = Callable[[PresenceChange], None]


@dataclass(frozen=True, slots=True)
class PublishResult:
    """Where a publish landed; ``duplicate`` when its key had been published already."""

    position: Position
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """A channel's head position and what a reader gets of its history."""

    head: Position
    recovery: Recovery


class Broker(Protocol):
    """Sequences, stores and carries publications. Guarantees every implementation keeps
    (the broker contract tests hold each one to them):

    * **Atomic publish**: ``publish`` assigns the channel's next offset (previous + 1,
      the first is 1), stores the publication in history and hands it to subscribed
      nodes as one step: concurrent publishers, on any node, yield one gap-free order.
    * **Idempotency**: a ``key`` published in the same channel within the dedupe window
      is not published again; the result is the original position, ``duplicate=True``.
    * **Per-channel order**: ``on_publication`` sees a channel's publications in offset
      order, each once, for as long as this node is subscribed to the channel.
    * **Epochs**: a channel's epoch changes only when its history was lost (an
      in-memory broker restarted, a store lost the channel). Offsets of different
      epochs are unrelated; a reader asking from a position of another epoch is told
      ``Gap``, never given publications of the new epoch as if they followed.
    * **Stable empty position**: reading a channel never published to gives
      ``(epoch, 0)``, and that position stays valid after its first publication (a
      reader resuming from it recovers offset 1 onward, not a gap).
    * **No loss on subscribe**: a publication made after ``subscribe`` returns reaches
      ``on_publication``; one made before it is in history (while retained). Readers
      subscribe first, then read history, and merge by offset.
    """

    async def start(self, on_publication: PublicationHandler) -> None:
        """Connect and start delivering publications of subscribed channels to the handler
        (and, for a broker with a ``presence_store``, presence changes of other nodes to
        its listener).

        The handler is called on the event loop, must not block and must not raise;
        if it does, the broker logs the error and goes on delivering.
        """
        ...

    async def close(self) -> None:
        """Stop delivering and release connections; idempotent."""
        ...

    async def publish(
        self,
        channel: ChannelName,
        data: bytes,
        *,
        key: str | None = None,
        info: ClientInfo | None = None,
    ) -> PublishResult:
        """Publish ``data`` (single-line JSON text) in ``channel``.

        Raises:
            BrokerError: the backend failed; the publication may or may not have been
                made, so a retry should carry the same ``key``.
        """
        ...

    async def history(
        self, channel: ChannelName, since: Position | None = None, limit: int | None = None
    ) -> HistoryRead:
        """Read ``channel``'s head and its publications after ``since``.

        With ``since``, the recovery decision of ``core.recovery``; without it,
        ``Replay`` of the latest ``limit`` retained publications (all with ``None``).
        """
        ...

    async def subscribe(self, channel: ChannelName) -> None:
        """Start delivering ``channel``'s publications to this node; idempotent."""
        ...

    async def unsubscribe(self, channel: ChannelName) -> None:
        """Stop delivering ``channel``'s publications to this node; idempotent."""
        ...

    async def is_ready(self) -> bool:
        """Whether the backend is reachable and publications can be made now.

        Answer the truth of *now*, and quickly: a remote backend is asked (a probe with
        a short time-out, about a second) rather than presumed up because its
        connection has not failed yet; a backend that does not answer in time is not
        ready. ``/ready`` bounds the call anyway (``READY_TIMEOUT_S``).
        """
        ...


@runtime_checkable
class AdoptingStore(Protocol):
    """A broker that can be a ring node's local store and take channels over from
    another node with their history (docs/modes/hashing.md, "Scaling"; memory, sqlite).
    Guarantees, beside the ``Broker``'s:

    * **Held channels**: ``held_channels`` names every channel the store has a head for
      (published to, or adopted), swept ones too.
    * **Positions kept**: ``adopt`` stores publications at the epoch and offsets they
      were given by their sequencer, never sequenced anew (``core.channel_log.plan_adoption``
      decides which are new and whether the channel restarts); afterwards ``history``
      answers for that epoch, and a later ``publish`` continues from the adopted head.
    * **Dedupe carried**: the ``key`` of each adopted publication is remembered at its
      offset, and so is each of the giver's ``remembered_keys`` handed to ``adopt``
      (those of publications evicted from history, or of a history retaining nothing),
      at its original time and within ``max_keys`` as a publish is: a publisher
      retrying at the new owner is answered ``duplicate`` while the key is inside the
      window it was in at the giver. A channel that ``adopt`` restarts past a hole in
      the epoch it holds (a fresh snapshot whose top is beyond its head) keeps the keys
      it remembered, so a giver sends each key once; one restarted in another epoch
      forgets them (they name offsets of an epoch it no longer has).
    * **Live to subscribers**: each newly stored publication reaches ``on_publication``
      (if this node is subscribed to the channel), in offset order, once.
    """

    async def held_channels(self) -> list[ChannelName]:
        """Return the channels this store holds a head for."""
        ...

    async def remembered_keys(self, channel: ChannelName) -> tuple[RememberedKey, ...]:
        """Return the idempotency keys of ``channel`` inside the dedupe window now, oldest
        first, whether or not their publications are retained (committed ones only).

        Raises:
            BrokerError: the backend failed.
        """
        ...

    async def adopt(
        self,
        channel: ChannelName,
        epoch: str,
        publications: Sequence[Publication],
        *,
        top: int,
        keys: Sequence[RememberedKey] = (),
    ) -> Position:
        """Store ``publications`` of ``channel`` (consecutive, of ``epoch``, ending at the
        giver's head ``top`` if any) at their positions, then remember ``keys`` (the
        giver's, of ``epoch``; those above the head held after are ignored: their
        publications bring them); return the head held after.

        Raises:
            ValueError: the publications are not so.
            BrokerError: the backend failed; the channel holds what it held, or the
                adopted state (the giver sends again).
        """
        ...


@runtime_checkable
class RenewingStore(Protocol):
    """A local store that can restart channels in new epochs (memory, sqlite): a ring
    node's history of them is stale once another node sequenced them meanwhile (its
    lease expired, or a ring gives it back channels without a hand-over:
    ``server.ring_node``). A restarted channel has no history and no idempotency keys,
    and its head is offset 0 of an epoch it never had, so a client resuming from an
    old position hears ``recovered: false`` and a subscriber is told of the gap.

    Both methods take effect at once for what the store serves: from the call on, no
    channel is sequenced or read from its stale copy (a store that restarts in I/O
    holds publishes and reads until it is done). The awaitable they return completes
    once the restart is durable; a store kept on disk keeps it across its own restart.
    """

    def start_new_epoch(self) -> Awaitable[None]:
        """Restart every channel, in one new epoch shared by all (as a fresh store).

        The awaitable raises ``BrokerError`` if the backend failed (nothing restarted).
        """
        ...

    def restart_channels(self, which: Callable[[ChannelName], bool]) -> Awaitable[int]:
        """Restart each channel held for which ``which`` is true, each in a new epoch
        of its own; the awaitable gives how many.

        The awaitable raises ``BrokerError`` if the backend failed (nothing restarted).
        """
        ...


class RingStore(Broker, AdoptingStore, Protocol):
    """A broker a ring node in etcd can store in: ``Broker`` and ``AdoptingStore``."""


# -- presence: who holds a channel, on every node --------------------------------------------


@runtime_checkable
class PresenceStore(Protocol):
    """Who is in each channel, on every node sharing the backend. Guarantees every
    implementation keeps (the presence part of the broker contract tests holds each
    one to them):

    * **Join and leave**: a client is listed in ``presence(channel)`` from its
      ``join`` returning until its ``leave`` returns; a ``join`` that raised may or may
      not have listed it (the caller leaves it to be sure). ``leave`` of a client not
      listed does nothing. One client id is listed once, with the user of its last join.
    * **Everywhere, read fresh**: ``presence(channel)`` asks the backend at the time
      of the call and lists the clients joined on every node, not only this one's; it
      is never a cache older than the call (a join returned before the call, on any
      node, is in the answer, save for the expiry below).
    * **Remote changes only, each once**: the handler given to ``listen`` hears the
      joins and leaves made on *other* nodes in channels this node's broker is
      subscribed to, each once, in the order that node made them; the node's own are
      announced by its hub, so they are never handed back to it.
    * **Dead nodes expire**: the entries of a node that stopped without leaving
      (killed, cut off) drop out of ``presence`` after the store's presence lifetime
      (30 s for Redis), without a leave event. Entries of a live node that reaches
      the backend never expire: it renews them. A single-node store keeps presence
      in memory: it ends with the node, and there is no other node to hear changes.
    """

    def listen(self, on_change: PresenceHandler) -> None:
        """Hand each presence change made on another node to ``on_change`` from now on.

        The handler is called on the event loop, must not block and must not raise;
        if it does, the store logs the error and goes on.
        """
        ...

    async def join(self, channel: ChannelName, client_id: str, user: str) -> None:
        """List ``client_id`` (of ``user``) in ``channel`` and tell other nodes.

        Raises:
            BrokerError: the backend failed; the client may or may not be listed.
        """
        ...

    async def leave(self, channel: ChannelName, client_id: str) -> None:
        """Remove ``client_id`` from ``channel`` and tell other nodes; idempotent.

        Raises:
            BrokerError: the backend failed; an entry left behind expires.
        """
        ...

    async def presence(self, channel: ChannelName) -> dict[str, str]:
        """Return ``{client_id: user}`` of the clients in ``channel`` on every node.

        Raises:
            BrokerError: the backend failed.
        """
        ...


@runtime_checkable
class HasPresenceStore(Protocol):
    """A broker that keeps presence itself (it shares the broker's connections)."""

    @property
    def presence_store(self) -> PresenceStore:
        """This broker's presence; the same object on every call."""
        ...


GapHandler = Callable[[ChannelName], None]


@runtime_checkable
class ReportsGaps(Protocol):
    """A broker that can learn, between publications, that publications of a channel it
    follows were lost for good (a relay whose upstream answered a resume with
    ``recovered: false``). Other brokers see a loss only as the next publication not
    following, which the hub judges itself (``core.catchup``); this one tells the hub
    at once, so the channel's clients resume now rather than at a later publication."""

    def listen_gaps(self, on_gap: GapHandler) -> None:
        """Call ``on_gap(channel)`` from now on whenever publications of ``channel``
        after what was handed on were lost. Called on the event loop; must not raise."""
        ...


# -- node control: commands between the nodes sharing a broker ------------------------------


@dataclass(frozen=True, slots=True)
class DisconnectUser:
    """Disconnect every connection of ``user`` with ``code`` and ``reason``."""

    user: str
    code: int
    reason: str


# What one node tells every node. A union as commands are added (a ring change next).
NodeCommand = DisconnectUser
NodeCommandHandler = Callable[[NodeCommand], None]


@runtime_checkable
class NodeControl(Protocol):
    """Carries commands from one node to every node sharing the broker. Guarantees:

    * **Every live node, the sender included**: a command sent reaches each node whose
      broker is started and connected when it is sent, this one too. The sender's own
      handler runs before ``send_to_nodes`` first awaits, so the caller can tell what
      it did here from what it left to the others.
    * **Best-effort, at most once**: a node that is down, reconnecting or cut off when
      a command is sent never gets it (commands are not stored or replayed); no node
      gets one twice. Commands must therefore be worth sending again, not counted.
    * **No order** between commands of different senders; one sender's arrive in order.
    * Single-node brokers (memory, sqlite) are local only: the one node is every node.
    """

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand each command, from any node, to ``on_command`` from now on.

        The handler is called on the event loop, must not block and must not raise;
        if it does, the broker logs the error and goes on.
        """
        ...

    async def send_to_nodes(self, command: NodeCommand) -> int:
        """Send ``command`` to every live node, this one included.

        Returns:
            How many nodes it was handed to, this one included, as far as the broker
            can tell at the time (1 for a single-node broker).

        Raises:
            BrokerError: the other nodes could not be told; this node's handler ran.
        """
        ...
