"""Owner routing (docs/protocol.md §9): a channel's routing key, and the ``Placement`` that
sends each channel to the owner of its key. Pure.

The routing key is chosen by the channel's namespace: a namespace of the ``user``
policy, whose channels are each one user's (``inbox:123`` is user 123's), routes by
that user, ``user:<id>``, so that every channel of one user, and that user's
connection, live on one node; every other namespace routes by the channel itself
(``doc:9``). ``RingPlacement`` answers admission from an ``Ownership`` (``core.ring``):
``HERE`` where this node owns the key, else ``Moved`` with the owner's base URL.
``FollowingPlacement`` is one whose ring changes (membership in etcd), and which may be
in transition: it answers by the roles of ``core.handover``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tidings.core.channel import ChannelName, name_after_namespace
from tidings.core.handover import Role, Sequence, Transition, publishing_role, serving_node
from tidings.core.namespace import Namespaces, Policy
from tidings.core.placement import HERE, Here, Moved
from tidings.core.ring import DEFAULT_VNODES, Ownership, OwnershipKind, ownership_of

USER_KEY_PREFIX = "user:"


def routing_key(channel: ChannelName, namespaces: Namespaces) -> str:
    """Return the routing key of ``channel``: ``user:<id>`` for a channel of a
    ``user``-policy namespace (``inbox:123`` -> ``user:123``), else the channel."""
    if namespaces.options_for(channel).policy is Policy.USER:
        return USER_KEY_PREFIX + name_after_namespace(channel)
    return channel


def user_key(user: str) -> str:
    """Return the routing key of a user's own channels and connections."""
    return USER_KEY_PREFIX + user


class RingPlacement:
    """This node's view of owner routing: which channels it serves, and where the
    others' owners are. A ``core.placement.Placement``."""

    __slots__ = ("_namespaces", "_ownership", "_urls", "node_id", "ring_version")

    def __init__(
        self,
        ownership: Ownership,
        node_id: str,
        urls: Mapping[str, str],
        namespaces: Namespaces,
        *,
        ring_version: int = 0,
    ) -> None:
        """Route by ``ownership`` as node ``node_id``; ``urls`` gives each node's base URL;
        ``ring_version`` is the version of the ring (0: a static ring, which never
        changes), the fencing token of forwarded calls (``core.node_call``).

        Raises:
            ValueError: a node of ``ownership`` has no URL in ``urls``.
        """
        missing = sorted(set(ownership.nodes) - set(urls))
        if missing:
            raise ValueError(f"nodes {missing} have no URL")
        self._ownership = ownership
        self._urls = {node: url.rstrip("/") for node, url in urls.items()}
        self._namespaces = namespaces
        self.node_id = node_id
        self.ring_version = ring_version

    def owner_url(self, key: str) -> str:
        """Return the base URL of the node that owns routing key ``key``."""
        return self._urls[self._ownership.owner(key)]

    def channel_owner_url(self, channel: ChannelName) -> str:
        """Return the base URL of the node that serves ``channel``."""
        return self.owner_url(routing_key(channel, self._namespaces))

    def owns(self, key: str) -> bool:
        """Whether this node owns routing key ``key``."""
        return self._ownership.owner(key) == self.node_id

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE`` if this node owns ``channel``'s routing key, else its owner."""
        owner = self._ownership.owner(routing_key(channel, self._namespaces))
        return HERE if owner == self.node_id else Moved(self._urls[owner])


class OwnerRouting(Protocol):
    """A placement that can also name the owner of any key (``GET /route``), and the
    version of the ring it routes by."""

    @property
    def ring_version(self) -> int:
        """The version of the ring routed by (0 for a static ring)."""
        ...

    def owner_url(self, key: str) -> str:
        """Return the base URL of the node that owns routing key ``key``."""
        ...

    def channel_owner_url(self, channel: ChannelName) -> str:
        """Return the base URL of the node that serves ``channel``."""
        ...

    def owns(self, key: str) -> bool:
        """Whether this node owns routing key ``key`` (sequences its channels)."""
        ...

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE`` if this node serves ``channel``, else its owner."""
        ...


class FollowingPlacement:
    """Owner routing over a ring that changes (membership in etcd): ``receive_ring``
    takes each version, settled or in transition (``core.handover``). Before the first
    (the node has not joined yet) every channel is served here and every key named as
    this node's, as without a ring.

    In a transition it answers by the roles of ``core.handover``: ``place`` (who serves
    subscriptions and history) by ``serving_node``, with the channels this node holds a
    replica of (``hold_replica``); ``publishing_role`` by ``publishing_role``, with
    whether this node sealed (``seal``); ``destination``, where the connections holding a
    channel belong now, also sends the clients of a channel this node gives away once
    its new owner holds the replica (``receiver_holds``). A new version clears the
    transition's state: the node's hand-over starts again for it.
    """

    __slots__ = (
        "_given",
        "_kind",
        "_namespaces",
        "_own_url",
        "_replicas",
        "_transition",
        "_urls",
        "_version",
        "_vnodes",
        "node_id",
        "sealed",
    )

    def __init__(
        self,
        node_id: str,
        own_url: str,
        namespaces: Namespaces,
        *,
        kind: OwnershipKind = "ring",
        vnodes: int = DEFAULT_VNODES,
    ) -> None:
        self.node_id = node_id
        self._own_url = own_url.rstrip("/")
        self._namespaces = namespaces
        self._kind: OwnershipKind = kind
        self._vnodes = vnodes
        self._transition: Transition | None = None
        self._urls: dict[str, str] = {}
        self._version = 0
        self._replicas: set[ChannelName] = set()
        self._given: set[ChannelName] = set()
        self.sealed = False
        """Whether this node sealed its hand-over in the current transition."""

    def receive_ring(
        self,
        nodes: Mapping[str, str],
        version: int = 0,
        previous: Mapping[str, str] | None = None,
    ) -> None:
        """Route by a new version of the ring: its nodes (id to base URL) and, in a
        transition, the nodes it moves from; no node at all (every node left): serve
        everything here again."""
        self._version = version
        self._replicas = set()
        self._given = set()
        self.sealed = False
        self._urls = {node: url.rstrip("/") for node, url in {**(previous or {}), **nodes}.items()}
        if not nodes:
            self._transition = None
            return
        current = ownership_of(self._kind, nodes, self._vnodes)
        old = ownership_of(self._kind, previous, self._vnodes) if previous else None
        self._transition = Transition(current, old)

    @property
    def ring_version(self) -> int:
        """The version of the latest ring received (0 before the first)."""
        return self._version

    @property
    def transition(self) -> Transition | None:
        """The ownerships routed by (``None`` before the first ring)."""
        return self._transition

    def url_of(self, node: str) -> str:
        """Return the base URL of ``node`` (of the ring or of the one it moves from)."""
        return self._own_url if node == self.node_id else self._urls[node]

    def key_of(self, channel: ChannelName) -> str:
        """Return ``channel``'s routing key."""
        return routing_key(channel, self._namespaces)

    # -- the transition's state, set by the node's hand-over ------------------------------

    def hold_replica(self, channel: ChannelName) -> None:
        """This node holds ``channel``'s replica (its snapshot applied): serve it."""
        self._replicas.add(channel)

    def serves_replica(self, channel: ChannelName) -> bool:
        """Whether this node serves ``channel`` from a hand-over replica: it is the new
        owner of the channel's moving key, and holds its snapshot."""
        transition = self._transition
        if transition is None or channel not in self._replicas:
            return False
        key = self.key_of(channel)
        return transition.moves(key) and transition.new_owner(key) == self.node_id

    def drop_replica(self, channel: ChannelName) -> None:
        """This node no longer holds a replica of ``channel`` it can serve."""
        self._replicas.discard(channel)

    def receiver_holds(self, channel: ChannelName) -> None:
        """The new owner of ``channel``, which this node gives, holds its replica: its
        clients may move there."""
        self._given.add(channel)

    def seal(self) -> None:
        """This node handed its moving channels over: their publications hold."""
        self.sealed = True

    # -- routing ---------------------------------------------------------------------------

    def owner_url(self, key: str) -> str:
        """Return the base URL of the node that owns routing key ``key`` (its old owner
        in a transition: the one that serves it until the ring is final)."""
        transition = self._transition
        return self._own_url if transition is None else self.url_of(transition.old_owner(key))

    def channel_owner_url(self, channel: ChannelName) -> str:
        """Return the base URL of the node that serves ``channel`` to a client anywhere."""
        return self.owner_url(self.key_of(channel))

    def owns(self, key: str) -> bool:
        """Whether this node owns routing key ``key``: it is the key's sequencer (its old
        owner while the ring is in transition), or no ring is known yet."""
        transition = self._transition
        return transition is None or transition.old_owner(key) == self.node_id

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE`` if this node serves ``channel``'s subscriptions and history
        (``serving_node``), else the node that does."""
        transition = self._transition
        if transition is None:
            return HERE
        node = serving_node(
            transition,
            self.node_id,
            self.key_of(channel),
            holds_replica=channel in self._replicas,
        )
        return HERE if node == self.node_id else Moved(self.url_of(node))

    def publishing_role(self, channel: ChannelName) -> Role:
        """What this node does with a publication of ``channel`` (``publishing_role``)."""
        transition = self._transition
        if transition is None:
            return Sequence()
        return publishing_role(transition, self.node_id, self.key_of(channel), sealed=self.sealed)

    def destination(self, channel: ChannelName) -> Here | Moved:
        """Where connections holding ``channel`` belong now: ``place``, but a channel this
        node gives away goes to its new owner once that holds the replica."""
        transition = self._transition
        if transition is not None and channel in self._given:
            key = self.key_of(channel)
            if transition.old_owner(key) == self.node_id and transition.moves(key):
                return Moved(self.url_of(transition.new_owner(key)))
        return self.place(channel)


class Destinations:
    """A ``Placement`` that answers ``FollowingPlacement.destination``: what the mover of
    connections (``server.ring_moves``) asks."""

    __slots__ = ("_placement",)

    def __init__(self, placement: FollowingPlacement) -> None:
        self._placement = placement

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return where connections holding ``channel`` belong now."""
        return self._placement.destination(channel)
