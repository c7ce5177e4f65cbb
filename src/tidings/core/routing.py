"""Owner routing (docs/protocol.md §9): a channel's routing key, and the ``Placement`` that
sends each channel to the owner of its key. Pure.

The routing key is chosen by the channel's namespace: a namespace of the ``user``
policy, whose channels are each one user's (``inbox:123`` is user 123's), routes by
that user, ``user:<id>``, so that every channel of one user, and that user's
connection, live on one node; every other namespace routes by the channel itself
(``doc:9``). ``RingPlacement`` answers admission from an ``Ownership`` (``core.ring``):
``HERE`` where this node owns the key, else ``Moved`` with the owner's base URL.
``FollowingPlacement`` is one whose ring changes (membership in etcd): it swaps in a
new ``RingPlacement`` at each version of the ring it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from tidings.core.channel import ChannelName, name_after_namespace
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
    """A ``RingPlacement`` over a ring that changes: ``receive_ring`` swaps in each new
    version. Before the first (the node has not joined yet) every channel is served
    here and every key named as this node's, as without a ring."""

    __slots__ = ("_current", "_kind", "_namespaces", "_own_url", "_version", "_vnodes", "node_id")

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
        self._current: RingPlacement | None = None
        self._version = 0

    def receive_ring(self, nodes: Mapping[str, str], version: int = 0) -> None:
        """Route by a new version of the ring: its nodes (id to base URL); no node at
        all (every node left): serve everything here again."""
        self._version = version
        if not nodes:
            self._current = None
            return
        ownership = ownership_of(self._kind, nodes, self._vnodes)
        self._current = RingPlacement(
            ownership, self.node_id, nodes, self._namespaces, ring_version=version
        )

    @property
    def ring_version(self) -> int:
        """The version of the latest ring received (0 before the first)."""
        return self._version

    @property
    def current(self) -> RingPlacement | None:
        """The placement of the latest ring received (``None``: none, or an empty one)."""
        return self._current

    def owner_url(self, key: str) -> str:
        """Return the base URL of the node that owns routing key ``key``."""
        current = self._current
        return self._own_url if current is None else current.owner_url(key)

    def channel_owner_url(self, channel: ChannelName) -> str:
        """Return the base URL of the node that serves ``channel``."""
        current = self._current
        return self._own_url if current is None else current.channel_owner_url(channel)

    def owns(self, key: str) -> bool:
        """Whether this node owns routing key ``key`` in the latest ring."""
        current = self._current
        return current is None or current.owns(key)

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE`` if this node owns ``channel``'s key in the latest ring."""
        current = self._current
        return HERE if current is None else current.place(channel)
