"""Who may subscribe to and publish in a channel (docs/protocol.md §8). Pure.

Rules, in order, for subscribing:

1. a channel the connection token lists (by name or pattern) is allowed. In a pattern
   ``*`` stands for any run of characters within one ``:``-separated segment
   (``room:*`` lists ``room:45`` but not ``room:45:admin``); every other character,
   ``?`` and ``[`` included, stands for itself;
2. otherwise the namespace's policy decides: ``public`` allows anyone, ``user`` allows
   only ``<namespace>:<sub>`` for the connection's own non-empty ``sub``, ``token``
   allows nothing more.

A client may publish only where the namespace has ``client_publish`` on *and* it may
subscribe: a user namespace with client publishing lets a user write to their own
channel, never to another user's.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from tidings.core.channel import ChannelName, name_after_namespace, namespace_of
from tidings.core.namespace import NamespaceOptions, Policy
from tidings.errors import PermissionDenied


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a connection proved about itself: its user id, the channels its token lists
    and when the token expires.

    ``user`` is ``""`` for an anonymous connection; ``channels`` is ``None`` when the
    token listed none; ``expires`` is the token's ``exp`` (Unix seconds), ``None`` for an
    anonymous connection or a token without one.
    """

    user: str = ""
    channels: tuple[str, ...] | None = None
    expires: int | None = None

    def lists(self, channel: ChannelName) -> bool:
        """Whether the token lists ``channel`` by name or pattern."""
        return self.channels is not None and any(
            pattern == channel or is_pattern_match(pattern, channel) for pattern in self.channels
        )


ANONYMOUS = Credentials()


def is_pattern_match(pattern: str, channel: str) -> bool:
    """Whether token channel ``pattern`` lists ``channel`` (see the module docstring)."""
    return _pattern_regex(pattern).fullmatch(channel) is not None


@functools.lru_cache(maxsize=1024)
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    # Tokens repeat the same few patterns: each is compiled once.
    return re.compile("[^:]*".join(re.escape(part) for part in pattern.split("*")))


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
