"""Hot channels: this node's busiest channels by publications/s and deliveries/s. Pure.

Heavy-hitters summaries (``core.heavy_hitters``) count, per channel, the publications
that reached this node's fan-out (its hits) and the deliveries they made (its weight:
one per local subscriber), both in one int: bounded space whatever the number of
channels. Counting is by windows: the caller closes a window every few seconds with
the time it lasted, the counts become rates (``ChannelRate``) that are read until the
next window closes, and counting starts afresh. So "per second" means over the last
window, not since the node started.

**Sampling.** A publication's count is one dict lookup and store, ~1,400 CPU
instructions in CPython: 5% of a fan-out to one subscriber, against the 3% the
tracking may cost (benchmarks/hot_channels.py). So with ``sample_every = S > 1``:

* a publication that made ``SAMPLED_BELOW`` deliveries or more is always counted (its
  fan-out is over twenty times the count's cost), in the *exact* summary;
* so are the first ``EXACT_PER_WINDOW`` publications of each window, whatever their
  deliveries: a node publishing less than that per window counts everything;
* after those, a lighter publication is counted with probability ``1/S``, each
  independently (a countdown to the next one drawn from the geometric law: one
  decrement per publication, no random draw), in the *sampled* summary, where each
  sample stands for ``S`` publications (an unbiased estimate).

The hub's fan-out does ``record`` inline (``ChannelHeat``'s attributes say how),
sparing a call per publication. When a window closes, a channel's rate is its exact
count plus ``S`` times its samples: an estimate whose ``*_error_per_s`` covers both
the summaries' bounds (what purges took) and, for sampled channels, three standard
deviations of the sampling. A channel whose deliveries/s surely (its rate less its
error) reached the threshold, and had not in the window before, is returned as a
crossing: the caller warns once per crossing, not once per publication.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final

from tidings.core.channel import ChannelName
from tidings.core.heavy_hitters import Estimate, HeavyHitters

# A publication with this many deliveries or more is counted, never sampled: its
# fan-out costs at least ~25,000 + 32 × ~2,000 instructions, against ~1,400 for the
# count (under 2%).
SAMPLED_BELOW: Final = 32
# Publications of a window counted before sampling starts (a countdown of 1 each).
EXACT_PER_WINDOW: Final = 1024
# The sampling's part of an error: this many standard deviations (a channel's true
# figure lies beyond in about 3 windows of 1,000).
SAMPLING_DEVIATIONS: Final = 3.0


@dataclass(frozen=True, slots=True)
class ChannelRate:
    """A channel's rates over the last window.

    The true rate is within ``*_error_per_s`` of the rate: at most that much below it
    and never above it when the channel was counted without sampling (the error is then
    the summaries' bound: what purges may have taken); otherwise the error adds three
    standard deviations of the sampling. A channel not listed had at most the errors of
    the listed ones' summaries.
    """

    channel: ChannelName
    publications_per_s: float
    publications_error_per_s: float
    deliveries_per_s: float
    deliveries_error_per_s: float


class ChannelHeat:
    """Counts a window's publications and deliveries by channel; rates of the last one.

    Args:
        capacity: the channels each summary keeps per figure after a purge (``k``:
            any channel above ``1 / (capacity + 1)`` of a window's counted
            publications or deliveries is listed).
        limit: the most channels each summary counts (memory is bounded by twice it);
            more than ``2 × capacity``, and the larger, the rarer the purges.
        deliveries_threshold_per_s: deliveries per second at which a channel is hot
            (``close_window`` returns its crossing); ``None``: never.
        sample_every: ``S``: after the window's first ``EXACT_PER_WINDOW``
            publications, one in ``S`` of those with fewer than ``SAMPLED_BELOW``
            deliveries is counted, on average; 1: every publication is.
        seed: of the sampling's random draws (tests); ``None``: the system's.

    Counting inline (the hub's fan-out): a publication that made ``deliveries >=
    sampled_below`` is counted in ``exact`` as ``HeavyHitters`` says; a lighter one
    decrements ``countdown``, and when it reaches 0 calls ``sample`` instead of
    storing it.
    """

    __slots__ = (
        "_exact_left",
        "_hot",
        "_log_skip",
        "_random",
        "_rates",
        "capacity",
        "countdown",
        "exact",
        "limit",
        "sample_every",
        "sampled",
        "sampled_below",
        "threshold",
    )

    def __init__(
        self,
        capacity: int,
        limit: int,
        deliveries_threshold_per_s: float | None = None,
        *,
        sample_every: int = 1,
        seed: int | None = None,
    ) -> None:
        if sample_every < 1:
            raise ValueError(f"sample_every must be at least 1, got {sample_every}")
        self.capacity = capacity
        self.limit = limit
        self.threshold = deliveries_threshold_per_s
        self.sample_every = sample_every
        # Without sampling every publication takes the exact path: no countdown at all.
        self.sampled_below = SAMPLED_BELOW if sample_every > 1 else 0
        # The current window's counts; replaced when it closes.
        self.exact: HeavyHitters[ChannelName] = HeavyHitters(capacity, limit)
        self.sampled: HeavyHitters[ChannelName] = HeavyHitters(capacity, limit)
        self.countdown = 1  # light publications until the next one counted
        self._exact_left = EXACT_PER_WINDOW
        self._random = random.Random(seed)
        # log(1 - 1/S): a geometric draw is log(U) over it (0 for S = 1: never drawn).
        self._log_skip = math.log1p(-1 / sample_every) if sample_every > 1 else 0.0
        self._rates: tuple[ChannelRate, ...] = ()
        self._hot: frozenset[ChannelName] = frozenset()

    def record(self, channel: ChannelName, deliveries: int) -> None:
        """Count (or sample) one publication of ``channel`` that made ``deliveries``
        local deliveries."""
        if deliveries >= self.sampled_below:
            self.exact.add(channel, deliveries)
            return
        countdown = self.countdown - 1
        if countdown:
            self.countdown = countdown
        else:
            self.sample(channel, deliveries)

    def sample(self, channel: ChannelName, deliveries: int) -> None:
        """Count a light publication whose countdown reached 0, and set the next one."""
        if self._exact_left:
            self._exact_left -= 1
            self.exact.add(channel, deliveries)
            self.countdown = 1
            return
        self.sampled.add(channel, deliveries)
        # Geometric on 1, 2, ...: every publication is counted with probability 1/S,
        # independently of the others, so periodic traffic cannot hide from the samples.
        uniform = 1.0 - self._random.random()  # in (0, 1]: its log is finite
        self.countdown = 1 + int(math.log(uniform) / self._log_skip)

    def close_window(self, elapsed_s: float) -> list[ChannelRate]:
        """End the window, which lasted ``elapsed_s`` (> 0); its rates are read until the
        next one ends. Return the channels that became hot in it, busiest first."""
        exact, sampled = self.exact, self.sampled
        self.exact = HeavyHitters(self.capacity, self.limit)
        self.sampled = HeavyHitters(self.capacity, self.limit)
        self.countdown = 1
        self._exact_left = EXACT_PER_WINDOW
        rates = [
            self._rate_of(channel, exact, sampled, elapsed_s)
            for channel in exact.counts.keys() | sampled.counts.keys()
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

    def _rate_of(
        self,
        channel: ChannelName,
        exact: HeavyHitters[ChannelName],
        sampled: HeavyHitters[ChannelName],
        elapsed_s: float,
    ) -> ChannelRate:
        counted = _estimate(exact, channel)
        samples = _estimate(sampled, channel)
        every = self.sample_every
        hits_margin = weight_margin = 0.0
        if samples.hits:
            # Samples ~ Binomial(n, 1/S): S × samples has variance n(S - 1) ≈ S(S - 1) ×
            # samples. Two samples more than drawn: the law of a few samples is skewed,
            # and the plain figure left the truth outside in 1.3% of windows (not 0.3%)
            # in tests/core/test_channel_heat.py's case. The deliveries' spread scales
            # with the deliveries per sample.
            spread = math.sqrt(every * (every - 1) * (samples.hits + 2))
            hits_margin = SAMPLING_DEVIATIONS * spread
            weight_margin = hits_margin * samples.weight / samples.hits
        return ChannelRate(
            channel=channel,
            publications_per_s=(counted.hits + every * samples.hits) / elapsed_s,
            publications_error_per_s=(counted.hits_error + every * samples.hits_error + hits_margin)
            / elapsed_s,
            deliveries_per_s=(counted.weight + every * samples.weight) / elapsed_s,
            deliveries_error_per_s=(
                counted.weight_error + every * samples.weight_error + weight_margin
            )
            / elapsed_s,
        )


def _estimate(summary: HeavyHitters[ChannelName], channel: ChannelName) -> Estimate[ChannelName]:
    """``channel``'s estimate in ``summary``; one not counted had at most the offsets."""
    estimate = summary.estimate(channel)
    if estimate is not None:
        return estimate
    hits, weight = summary.hits_offset, summary.weight_offset
    return Estimate(channel, hits, hits, weight, weight)


def _busiest_first(rate: ChannelRate) -> tuple[float, float, str]:
    return (-rate.deliveries_per_s, -rate.publications_per_s, rate.channel)
