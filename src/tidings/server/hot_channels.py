"""Hot channels on a running node: the counting windows, the warning, the JSON fields.

I/O: one asyncio task per node closes a counting window of ``core.channel_heat`` every
``hot_channel_window`` and logs a WARNING for each channel that became hot in it (its
deliveries/s reached ``hot_channel_deliveries_per_s``): once per crossing, whatever the
publication rate. The counting itself is the hub's, in its fan-out. ``GET /metrics``,
``GET /api/channels?top=N`` and the status page read the rates of the last window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from tidings.core.channel_heat import ChannelHeat, ChannelRate
from tidings.server.settings import Settings

logger = logging.getLogger(__name__)

# Channels the summary keeps per figure after a purge: any channel carrying over 1/1025
# of the window's publications or deliveries is surely among them. Not 100: with a few
# hundred busy channels a smaller summary purges (two sorts) every few hundred
# publications, which made the tracking cost +41% of fan-out in
# benchmarks/hot_channels.py's rooms case.
HOT_CHANNEL_CAPACITY: Final = 1024
# The most channels each of its two summaries (counted, sampled) counts: about 1 MiB
# each at most (a dict entry and an int each, plus the names), whatever the traffic.
# Sixteen times the capacity: a purge (two sorts and a pass, some 200 ns per channel
# counted) keeps at most twice the capacity, so one comes at most every 14,336 new
# channels, and a node with fewer channels in a window never purges. At 8 times,
# benchmarks/hot_channels.py's users case (20,000 channels) paid 313 ns per
# publication, 3.3% of its fan-out; 278 ns at 16.
HOT_CHANNEL_LIMIT: Final = 16 * HOT_CHANNEL_CAPACITY
# Most channels ``GET /api/channels?top=N`` lists (docs/protocol.md §6).
MAX_HOT_CHANNELS_TOP: Final = 100
# Channels /metrics labels: few enough for any Prometheus (bounded label cardinality).
HOT_CHANNELS_METRIC_TOP: Final = 10
# Channels the status page shows.
HOT_CHANNELS_STATUS_TOP: Final = 5


def channel_heat_for(settings: Settings) -> ChannelHeat | None:
    """Return the hot-channel counter the settings ask for (``None``: ``hot_channels``
    is off)."""
    if not settings.hot_channels:
        return None
    threshold = settings.hot_channel_deliveries_per_s
    return ChannelHeat(
        HOT_CHANNEL_CAPACITY,
        HOT_CHANNEL_LIMIT,
        threshold if threshold > 0 else None,
        sample_every=settings.hot_channel_sampling,
    )


def rate_fields(rate: ChannelRate) -> dict[str, float]:
    """The JSON fields of one hot channel (``/api/channels?top=N``, the status page)."""

    return {
        "publications_per_s": round(rate.publications_per_s, 2),
        "publications_error_per_s": round(rate.publications_error_per_s, 2),
        "deliveries_per_s": round(rate.deliveries_per_s, 2),
        "deliveries_error_per_s": round(rate.deliveries_error_per_s, 2),
    }


class HotChannelWindows:
    """Closes ``heat``'s counting window every ``window_s`` and warns of hot channels."""

    def __init__(self, heat: ChannelHeat, window_s: float) -> None:
        self.heat = heat
        self.window_s = window_s
        self._opened_s = time.monotonic()

    async def run(self) -> None:
        """Close a window every ``window_s`` until cancelled."""
        self._opened_s = time.monotonic()  # the first window opens as the node starts
        while True:
            await asyncio.sleep(self.window_s)
            try:
                self.close_window(time.monotonic())
            except Exception:  # a task boundary: log, and count on
                logger.exception("closing the hot-channel window failed")

    def close_window(self, now_s: float) -> list[ChannelRate]:
        """End the window at ``now_s`` (monotonic); warn of the channels that became hot
        in it, and return them."""
        elapsed_s = max(now_s - self._opened_s, 1e-3)
        self._opened_s = now_s
        crossings = self.heat.close_window(elapsed_s)
        for rate in crossings:
            logger.warning(
                "hot channel %s: %.0f deliveries/s to this node's subscribers "
                "(%.1f publications/s), at or over hot_channel_deliveries_per_s = %g; "
                "see docs/scaling.md",
                rate.channel,
                rate.deliveries_per_s,
                rate.publications_per_s,
                self.heat.threshold or 0.0,
            )
        return crossings
