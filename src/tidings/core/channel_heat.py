"""Hot channels: this node's busiest channels by publications/s and deliveries/s. Pure.

Two heavy-hitters summaries (``core.heavy_hitters``) count, per channel, the publications
that reached this node's fan-out and the deliveries they made (one per local
subscriber): bounded space whatever the number of channels. Counting is by windows: the
caller closes a window every few seconds with the time it lasted, the counts become
rates (``ChannelRate``) that are read until the next window closes, and counting starts
afresh. So "per second" means over the last window, not since the node started.

When a window closes, a channel whose deliveries/s surely (its count less its error)
reached the threshold, and had not in the window before, is returned as a crossing: the
caller warns once per crossing, not once per publication.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.core.channel import ChannelName
from tidings.core.heavy_hitters import Estimate, HeavyHitters


@dataclass(frozen=True, slots=True)
class ChannelRate:
    """A channel's rates over the last window.

    A rate is an upper bound, over by at most its ``*_error_per_s`` (the summary's
    offset: what it may have forgotten of the channel). ``None``: the channel is not
    among those counted for that figure, which is then at most its error.
    """

    channel: ChannelName
    publications_per_s: float | None
    publications_error_per_s: float
    deliveries_per_s: float | None
    deliveries_error_per_s: float


class ChannelHeat:
    """Counts a window's publications and deliveries by channel; rates of the last one.

    Args:
        capacity: the channels each summary keeps after a purge (it counts four
            times as many at most: memory is bounded by it).
        deliveries_threshold_per_s: deliveries per second at which a channel is hot
            (``close_window`` returns its crossing); ``None``: never.
    """

    __slots__ = ("_deliveries", "_hot", "_publications", "_rates", "capacity", "threshold")

    def __init__(self, capacity: int, deliveries_threshold_per_s: float | None = None) -> None:
        self.capacity = capacity
        self.threshold = deliveries_threshold_per_s
        self._publications: HeavyHitters[ChannelName] = HeavyHitters(capacity)
        self._deliveries: HeavyHitters[ChannelName] = HeavyHitters(capacity)
        self._rates: tuple[ChannelRate, ...] = ()
        self._hot: frozenset[ChannelName] = frozenset()

    def record(self, channel: ChannelName, deliveries: int) -> None:
        """Count one publication of ``channel`` that made ``deliveries`` local deliveries."""
        self._publications.add(channel)
        if deliveries:
            self._deliveries.add(channel, deliveries)

    def close_window(self, elapsed_s: float) -> list[ChannelRate]:
        """End the window, which lasted ``elapsed_s`` (> 0); its rates are read until the
        next one ends. Return the channels that became hot in it, busiest first."""
        publications, deliveries = self._publications, self._deliveries
        self._publications = HeavyHitters(self.capacity)
        self._deliveries = HeavyHitters(self.capacity)
        rates = [
            _rate_of(channel, publications, deliveries, elapsed_s)
            for channel in {*publications.keys(), *deliveries.keys()}
        ]
        rates.sort(key=_busiest_first)
        self._rates = tuple(rates)
        if self.threshold is None:
            return []
        hot = [
            rate
            for rate in rates
            if rate.deliveries_per_s is not None
            and rate.deliveries_per_s - rate.deliveries_error_per_s >= self.threshold
        ]
        crossings = [rate for rate in hot if rate.channel not in self._hot]
        self._hot = frozenset(rate.channel for rate in hot)
        return crossings

    def top(self, n: int) -> tuple[ChannelRate, ...]:
        """Return the last window's ``n`` busiest channels: by deliveries/s, then by
        publications/s."""
        return self._rates[:n]


def _rate_of(
    channel: ChannelName,
    publications: HeavyHitters[ChannelName],
    deliveries: HeavyHitters[ChannelName],
    elapsed_s: float,
) -> ChannelRate:
    published = publications.estimate(channel)
    delivered = deliveries.estimate(channel)

    def per_s(
        estimate: Estimate[ChannelName] | None, summary: HeavyHitters[ChannelName]
    ) -> float | None:
        if estimate is not None:
            return estimate.count / elapsed_s
        # Not counted: zero if the summary never purged, unknown (small) if it did.
        return 0.0 if summary.offset == 0 else None

    return ChannelRate(
        channel=channel,
        publications_per_s=per_s(published, publications),
        publications_error_per_s=publications.offset / elapsed_s,
        deliveries_per_s=per_s(delivered, deliveries),
        deliveries_error_per_s=deliveries.offset / elapsed_s,
    )


def _busiest_first(rate: ChannelRate) -> tuple[float, float, str]:
    return (-(rate.deliveries_per_s or 0.0), -(rate.publications_per_s or 0.0), rate.channel)
