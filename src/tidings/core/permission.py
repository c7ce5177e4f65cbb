"""Who may subscribe to and publish in a channel (PROTOCOL.md §8). Pure.

Rules, in order, for subscribing:

1. a channel the connection token lists (by name or ``prefix*`` pattern) is allowed;
2. otherwise the namespace's policy decides: ``public`` allows anyone, ``user`` allows
   only ``<namespace>:<sub>`` for the connection's own non-empty ``sub``, ``token``
   allows nothing more.

A client may publish only where the namespace has ``client_publish`` on *and* it may
subscribe: a user namespace with client publishing lets a user write to their own
channel, never to another user's.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from tidings.core.channel import ChannelName, name_after_namespace, namespace_of
from tidings.core.namespace import NamespaceOptions, Policy
from tidings.errors import PermissionDenied


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a connection proved about itself: its user id and the channels its token lists.

    ``user`` is ``""`` for an anonymous connection; ``channels`` is ``None`` when the
    token listed none.
    """

    user: str = ""
    channels: tuple[str, ...] | None = None

    def lists(self, channel: ChannelName) -> bool:
        """Whether the token lists ``channel`` by name or pattern."""
        return self.channels is not None and any(
            pattern == channel or fnmatchcase(channel, pattern) for pattern in self.channels
        )


ANONYMOUS = Credentials()


def check_subscribe(channel: ChannelName, options: NamespaceOptions, who: Credentials) -> None:
    """Allow or refuse a subscription.

    Raises:
        PermissionDenied: ``who`` may not subscribe to ``channel``; the message says why.
    """
    if who.lists(channel) or options.policy is Policy.PUBLIC:
        return
    if options.policy is Policy.USER:
        if who.user and name_after_namespace(channel) == who.user and namespace_of(channel):
            return
        raise PermissionDenied(
            f"channel {channel} is in a per-user namespace: only "
            f"{namespace_of(channel)}:<your user id> may be subscribed"
            + ("" if who.user else ", and this connection is anonymous")
        )
    raise PermissionDenied(f"channel {channel} may be subscribed only if the token lists it")


def check_publish(channel: ChannelName, options: NamespaceOptions, who: Credentials) -> None:
    """Allow or refuse a publication from a client connection.

    Raises:
        PermissionDenied: clients may not publish in ``channel``; the message says why.
    """
    if not options.client_publish:
        raise PermissionDenied(
            f"clients may not publish in channel {channel}: its namespace has "
            "client_publish off; publish through the server API instead"
        )
    check_subscribe(channel, options, who)
