"""What a subscription yields to the application: publications, and gaps it must know of."""

from __future__ import annotations

from dataclasses import dataclass

from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication


@dataclass(frozen=True, slots=True)
class GapNotice:
    """The server could not recover ``channel`` from ``since``: publications were missed.

    The application should refetch its state; the subscription goes on from ``position``.
    """

    channel: ChannelName
    since: Position
    position: Position


Event = Publication | GapNotice
