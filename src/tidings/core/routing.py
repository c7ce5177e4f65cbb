"""Owner routing (docs/protocol.md §9): a channel's routing key, and the ``Placement`` that
sends each channel to the owner of its key. Pure.

The routing key is chosen by the channel's namespace: a namespace of the ``user``
policy, whose channels are each one user's (``inbox:123`` is user 123's), routes by
that user, ``user:<id>``, so that every channel of one user, and that user's
connection, live on one node; every other namespace routes by the channel itself
(``doc:9``). ``RingPlacement`` answers admission from an ``Ownership`` (``core.ring``):
``HERE`` where this node owns the key, else ``Moved`` with the owner's base URL.
"""

from __future__ import annotations

from collections.abc import Mapping

from tidings.core.channel import ChannelName, name_after_namespace
from tidings.core.namespace import Namespaces, Policy
from tidings.core.placement import HERE, Here, Moved
from tidings.core.ring import Ownership

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

    __slots__ = ("_namespaces", "_ownership", "_urls", "node_id")

    def __init__(
        self,
        ownership: Ownership,
        node_id: str,
        urls: Mapping[str, str],
        namespaces: Namespaces,
    ) -> None:
        """Route by ``ownership`` as node ``node_id``; ``urls`` gives each node's base URL.

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

    def owner_url(self, key: str) -> str:
        """Return the base URL of the node that owns routing key ``key``."""
        return self._urls[self._ownership.owner(key)]

    def channel_owner_url(self, channel: ChannelName) -> str:
        """Return the base URL of the node that serves ``channel``."""
        return self.owner_url(routing_key(channel, self._namespaces))

    def place(self, channel: ChannelName) -> Here | Moved:
        """Return ``HERE`` if this node owns ``channel``'s routing key, else its owner."""
        owner = self._ownership.owner(routing_key(channel, self._namespaces))
        return HERE if owner == self.node_id else Moved(self._urls[owner])
