"""The rules that admit a client's channels, the same for every transport. Pure.

Who may hold which channel is decided here once, for the WebSocket ``subscribe``
command and for the channels an SSE stream or a poll names: each channel must be
allowed by its namespace or the token (``core.permission``), the connection must stay
within ``max_channels_per_connection``, and the channel must be served on this node
(``core.placement``): a channel owned elsewhere is ``ChannelMoved`` with its owner's
base URL, which each transport turns into its own answer (docs/protocol.md §9).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from tidings.core.channel import ChannelName
from tidings.core.namespace import NamespaceOptions, Namespaces
from tidings.core.permission import Credentials, check_subscribe
from tidings.core.placement import LOCAL_PLACEMENT, Moved, Placement
from tidings.errors import BadRequest, ChannelMoved, TooManyRequests


def check_subscription(
    channel: ChannelName,
    credentials: Credentials,
    options: NamespaceOptions,
    *,
    held: Collection[ChannelName],
    limit: int,
) -> None:
    """Admit one more channel on a connection that already holds ``held``.

    Raises:
        PermissionDenied: ``credentials`` may not subscribe to ``channel``.
        BadRequest: ``channel`` is already held.
        TooManyRequests: the connection holds ``limit`` channels already.
    """
    check_subscribe(channel, options, credentials)
    if channel in held:
        raise BadRequest(f"already subscribed to {channel}")
    if len(held) >= limit:
        raise TooManyRequests(f"a connection may hold at most {limit} subscriptions")


def check_channels(
    channels: Sequence[ChannelName], credentials: Credentials, namespaces: Namespaces
) -> None:
    """Admit every channel a stream or a poll names (their count is checked apart, before
    the token: ``core.resume.check_channel_count``).

    Raises:
        PermissionDenied: ``credentials`` may not subscribe to one of ``channels``.
    """
    for channel in channels:
        check_subscribe(channel, namespaces.options_for(channel), credentials)


def check_placement(channels: Sequence[ChannelName], placement: Placement) -> None:
    """Admit channels only where this node serves them all.

    Raises:
        ChannelMoved: the first channel served elsewhere, with its owner's base URL.
    """
    if placement is LOCAL_PLACEMENT:
        return  # every channel is here: nothing to ask on every poll's path
    for channel in channels:
        place = placement.place(channel)
        if isinstance(place, Moved):
            raise ChannelMoved(channel, place.url)
