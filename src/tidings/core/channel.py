"""Channel names and namespaces (docs/protocol.md §1). Pure."""

from __future__ import annotations

import re
from typing import Final, NewType

from tidings.errors import BadRequest

ChannelName = NewType("ChannelName", str)
NamespaceName = NewType("NamespaceName", str)

MAX_CHANNEL_LENGTH: Final = 255
DEFAULT_NAMESPACE: Final = NamespaceName("")
NAMESPACE_SEPARATOR: Final = ":"

_CHANNEL_PATTERN: Final = re.compile(r"[A-Za-z0-9_\-:.@/=]{1,255}")


def parse_channel(name: object) -> ChannelName:
    """Validate a channel name received from a peer.

    Args:
        name: the value the peer sent.

    Returns:
        The name, typed as a ``ChannelName``.

    Raises:
        BadRequest: the name is not a string of 1–255 allowed characters.
    """
    if not isinstance(name, str):
        raise BadRequest(f"channel must be a string, got {type(name).__name__}")
    if _CHANNEL_PATTERN.fullmatch(name) is None:
        if not name:
            raise BadRequest("channel must not be empty")
        if len(name) > MAX_CHANNEL_LENGTH:
            raise BadRequest(
                f"channel is {len(name)} characters long; at most {MAX_CHANNEL_LENGTH} are allowed"
            )
        bad = next(ch for ch in name if _CHANNEL_PATTERN.fullmatch(ch) is None)
        raise BadRequest(f"channel contains {bad!r}; allowed are A-Z a-z 0-9 and _ - : . @ / =")
    return ChannelName(name)


def namespace_of(channel: ChannelName) -> NamespaceName:
    """Return the part of ``channel`` before its first ``:``, or the default namespace."""
    head, separator, _ = channel.partition(NAMESPACE_SEPARATOR)
    return NamespaceName(head) if separator else DEFAULT_NAMESPACE


def name_after_namespace(channel: ChannelName) -> str:
    """Return the part of ``channel`` after its first ``:`` (the whole name without one)."""
    _, separator, tail = channel.partition(NAMESPACE_SEPARATOR)
    return tail if separator else channel
