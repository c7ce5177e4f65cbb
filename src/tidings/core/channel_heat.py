"""Hot channels: this node's busiest channels by publications/s and deliveries/s. Pure.

One heavy-hitters summary (``core.heavy_hitters``) counts, per channel, the publications
that reached this node's fan-out (its hits) and the deliveries they made (its weight:
one per local subscriber), both in one int: bounded space whatever the number of
channels, one dict lookup per publication. The hub's fan-out counts through
``summary`` directly (``HeavyHitters`` says how), sparing a call per publication;
``record`` does the same for everyone else. Counting is by windows: the caller closes a
window every few seconds with the time it lasted, the counts become rates
(``ChannelRate``) that are read until the next window closes, and counting starts
afresh. So "per second" means over the last window, not since the node started.

When a window closes, a channel whose deliveries/s surely (its count less its error)
reached the threshold, and had not in the window before, is returned as a crossing: the
caller warns once per crossing, not once per publication.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.core.channel import ChannelName
from tidings.core.heavy_hitters import HeavyHitters


@dataclass(frozen=True, slots=True)
class ChannelRate:
    """A channel's rates over the last window.

    A rate is an upper bound, over by at most its ``*_error_per_s`` (the summary's
    offset for that figure: what it may have forgotten of the channel). A channel not
    listed had at most the errors of the listed ones.
    """

    channel: ChannelName
    publications_per_s: float
    publications_error_per_s: float
    deliveries_per_s: float
    deliveries_error_per_s: float


class ChannelHeat:
    """Counts a window's publications and deliveries by channel; rates of the last one.

    Args:
        capacity: the channels the summary keeps per figure after a purge (``k``:
            any channel above ``1 / (capacity + 1)`` of a window's publications or
            deliveries is listed).
        limit: the most channels the summary counts (memory is bounded by it); more
            than ``2 × capacity``, and the larger, the rarer the purges.
        deliveries_threshold_per_s: deliveries per second at which a channel is hot
            (``close_window`` returns its crossing); ``None``: never.
    """

    __slots__ = ("_hot", "_rates", "capacity", "limit", "summary", "threshold")

    def __init__(
        self, capacity: int, limit: int, deliveries_threshold_per_s: float | None = None
    ) -> None:
        self.capacity = capacity
        self.limit = limit
        self.threshold = deliveries_threshold_per_s
        # The current window's counts; replaced when it closes.
        self.summary: HeavyHitters[ChannelName] = HeavyHitters(capacity, limit)
        self._rates: tuple[ChannelRate, ...] = ()
        self._hot: frozenset[ChannelName] = frozenset()

    def record(self, channel: ChannelName, deliveries: int) -> None:
        """Count one publication of ``channel`` that made ``deliveries`` local deliveries."""
        self.summary.add(channel, deliveries)

    def close_window(self, elapsed_s: float) -> list[ChannelRate]:
        """End the window, which lasted ``elapsed_s`` (> 0); its rates are read until the
        next one ends. Return the channels that became hot in it, busiest first."""
        summary = self.summary
        self.summary = HeavyHitters(self.capacity, self.limit)
        rates = [
            ChannelRate(
                channel=estimate.key,
                publications_per_s=estimate.hits / elapsed_s,
                publications_error_per_s=estimate.hits_error / elapsed_s,
                deliveries_per_s=estimate.weight / elapsed_s,
                deliveries_error_per_s=estimate.weight_error / elapsed_s,
            )
            for estimate in summary.top(len(summary))
        ]
        rates.sort(key=_busiest_first)
        self._rates = tuple(rates)
        if self.threshold is None:
            return []
        hot = [
            rate
            for rate in rates
            if rate.deliveries_per_s - rate.deliveries_error_per_s >= self.threshold
        ]
        crossings = [rate for rate in hot if rate.channel not in self._hot]
        self._hot = frozenset(rate.channel for rate in hot)
        return crossings

    def top(self, n: int) -> tuple[ChannelRate, ...]:
        """Return the last window's ``n`` busiest channels: by deliveries/s, then by
        publications/s."""
        return self._rates[:n]


def _busiest_first(rate: ChannelRate) -> tuple[float, float, str]:
    return (-rate.deliveries_per_s, -rate.publications_per_s, rate.channel)
