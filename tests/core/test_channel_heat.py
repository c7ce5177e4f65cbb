"""Hot channels (core/channel_heat.py): rates per window, busiest first, and one crossing
per channel each time it becomes hot."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.channel_heat import EXACT_PER_WINDOW, SAMPLED_BELOW, ChannelHeat

ROOM = ChannelName("room:1")
LOBBY = ChannelName("room:lobby")


def test_rates_are_counts_over_the_window_busiest_first() -> None:
    heat = ChannelHeat(capacity=8, limit=32)
    for _ in range(20):
        heat.record(ROOM, 100)
    for _ in range(50):
        heat.record(LOBBY, 1)
    heat.close_window(10.0)
    first, second = heat.top(2)
    assert (first.channel, first.publications_per_s, first.deliveries_per_s) == (ROOM, 2.0, 200.0)
    assert (second.channel, second.publications_per_s, second.deliveries_per_s) == (
        LOBBY,
        5.0,
        5.0,
    )


def test_rates_are_those_of_the_last_window_not_all_time() -> None:
    heat = ChannelHeat(capacity=8, limit=32)
    for _ in range(100):
        heat.record(ROOM, 10)
    heat.close_window(1.0)
    heat.record(LOBBY, 1)
    assert heat.top(1)[0].channel == ROOM  # read until the next window closes
    heat.close_window(1.0)
    assert [rate.channel for rate in heat.top(5)] == [LOBBY]


def test_channel_without_subscribers_has_zero_deliveries_while_nothing_was_purged() -> None:
    heat = ChannelHeat(capacity=8, limit=32)
    heat.record(ROOM, 0)
    heat.close_window(1.0)
    assert heat.top(1)[0].deliveries_per_s == 0.0


def test_after_a_purge_every_listed_rate_carries_the_error_of_its_figure() -> None:
    heat = ChannelHeat(capacity=1, limit=3)
    for n in range(4):
        heat.record(ChannelName(f"a:{n}"), 5 + n)  # the fourth purges
    heat.record(ROOM, 0)
    heat.close_window(1.0)
    # Purged: publications by 1 (all had one), deliveries by 7 (the second largest).
    rates = {rate.channel: rate for rate in heat.top(10)}
    assert set(rates) == {ChannelName("a:3"), ROOM}
    busiest = rates[ChannelName("a:3")]
    assert (busiest.deliveries_per_s, busiest.deliveries_error_per_s) == (8.0, 7.0)
    assert (busiest.publications_per_s, busiest.publications_error_per_s) == (1.0, 1.0)
    room = rates[ROOM]
    assert (room.publications_per_s, room.deliveries_per_s) == (2.0, 7.0)


def test_crossing_is_reported_once_until_the_channel_cools_down() -> None:
    heat = ChannelHeat(capacity=8, limit=32, deliveries_threshold_per_s=100.0)
    crossings = []
    for window_deliveries in (1000, 1000, 10, 1000):
        heat.record(ROOM, window_deliveries)
        crossings.append([rate.channel for rate in heat.close_window(1.0)])
    assert crossings == [[ROOM], [], [], [ROOM]]


def test_no_crossings_without_a_threshold() -> None:
    heat = ChannelHeat(capacity=8, limit=32)
    heat.record(ROOM, 10**9)
    assert heat.close_window(1.0) == []


events = st.lists(
    st.tuples(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=40)),
    max_size=300,
)


@given(st.integers(min_value=1, max_value=16), events)
def test_rates_stay_bounded_by_the_limit_and_never_underestimate(
    capacity: int, stream: list[tuple[int, int]]
) -> None:
    heat = ChannelHeat(capacity=capacity, limit=4 * capacity)
    published: dict[ChannelName, int] = {}
    delivered: dict[ChannelName, int] = {}
    for number, deliveries in stream:
        channel = ChannelName(f"c:{number}")
        heat.record(channel, deliveries)
        published[channel] = published.get(channel, 0) + 1
        delivered[channel] = delivered.get(channel, 0) + deliveries
    heat.close_window(2.0)
    rates = heat.top(10**6)
    assert len(rates) <= 4 * capacity
    for rate in rates:
        assert rate.publications_per_s * 2.0 >= published[rate.channel]
        assert (rate.publications_per_s - rate.publications_error_per_s) * 2.0 <= published[
            rate.channel
        ]
        assert rate.deliveries_per_s * 2.0 >= delivered[rate.channel]
        assert (rate.deliveries_per_s - rate.deliveries_error_per_s) * 2.0 <= delivered[
            rate.channel
        ]
    listed = {rate.channel for rate in rates}
    for channel, publications in published.items():  # over 1/(capacity+1): listed
        if publications > sum(published.values()) / (capacity + 1):
            assert channel in listed
        if delivered[channel] > sum(delivered.values()) / (capacity + 1):
            assert channel in listed


# -- sampling (sample_every > 1) ----------------------------------------------------------


def feed(heat: ChannelHeat, stream: list[tuple[int, int]]) -> None:
    for number, deliveries in stream:
        heat.record(ChannelName(f"c:{number}"), deliveries)


@given(st.integers(min_value=2, max_value=64), st.integers(min_value=0, max_value=2**32), events)
def test_a_window_of_few_publications_is_counted_as_without_sampling(
    every: int, seed: int, stream: list[tuple[int, int]]
) -> None:
    # The first EXACT_PER_WINDOW publications of a window are all counted.
    assert len(stream) <= EXACT_PER_WINDOW
    sampled = ChannelHeat(capacity=4, limit=16, sample_every=every, seed=seed)
    exact = ChannelHeat(capacity=4, limit=16)
    feed(sampled, stream)
    feed(exact, stream)
    assert sampled.close_window(3.0) == exact.close_window(3.0)
    assert sampled.top(100) == exact.top(100)


@given(
    st.integers(min_value=2, max_value=64),
    st.integers(min_value=0, max_value=2**32),
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=20), st.integers(min_value=0, max_value=10**6)
        ),
        max_size=300,
    ),
)
def test_publications_of_many_deliveries_are_never_sampled(
    every: int, seed: int, stream: list[tuple[int, int]]
) -> None:
    # Past the window's exact publications, the light ones are sampled, and those of
    # SAMPLED_BELOW deliveries or more (on channels of their own here) still counted.
    heat = ChannelHeat(capacity=64, limit=256, sample_every=every, seed=seed)
    for _ in range(EXACT_PER_WINDOW):
        heat.record(LOBBY, 1)
    published: dict[ChannelName, int] = {}
    delivered: dict[ChannelName, int] = {}
    for number, deliveries in stream:
        heavy = deliveries >= SAMPLED_BELOW
        channel = ChannelName(f"{'heavy' if heavy else 'light'}:{number}")
        heat.record(channel, deliveries)
        if heavy:
            published[channel] = published.get(channel, 0) + 1
            delivered[channel] = delivered.get(channel, 0) + deliveries
    heat.close_window(1.0)
    rates = {rate.channel: rate for rate in heat.top(1000)}
    for channel, count in published.items():
        rate = rates[channel]
        assert (rate.publications_per_s, rate.publications_error_per_s) == (count, 0)
        assert (rate.deliveries_per_s, rate.deliveries_error_per_s) == (delivered[channel], 0)


def test_a_window_counts_exactly_again_after_the_one_before_sampled() -> None:
    heat = ChannelHeat(capacity=8, limit=32, sample_every=16, seed=3)
    for _ in range(EXACT_PER_WINDOW * 4):
        heat.record(ROOM, 1)
    heat.close_window(1.0)
    assert heat.top(1)[0].publications_error_per_s > 0  # sampled: a margin
    for _ in range(10):
        heat.record(LOBBY, 2)
    heat.close_window(1.0)
    (lobby,) = heat.top(5)
    assert (lobby.publications_per_s, lobby.publications_error_per_s) == (10.0, 0.0)
    assert (lobby.deliveries_per_s, lobby.deliveries_error_per_s) == (20.0, 0.0)


def test_sampled_estimates_lie_within_their_error_in_nearly_every_window() -> None:
    # Three standard deviations: outside in about 3 windows of 1,000 for a normal
    # law. Over 300 seeded windows of 10 channels (deterministic), 12 of the 3,000
    # estimates miss (2 of them channels of 40 publications drawing no sample, so not
    # listed); the plain binomial margin missed 30, a 1-deviation one would miss ~900.
    published = {ChannelName(f"user:{n}"): 40 * (n + 1) for n in range(10)}
    stream = [channel for channel, count in published.items() for _ in range(count)]
    stream = [*[LOBBY] * EXACT_PER_WINDOW, *stream]  # the exact part goes first
    misses = 0
    checked = 0
    for seed in range(300):
        heat = ChannelHeat(capacity=32, limit=128, sample_every=8, seed=seed)
        order = random.Random(seed)
        shuffled = stream[EXACT_PER_WINDOW:]
        order.shuffle(shuffled)
        for channel in [*stream[:EXACT_PER_WINDOW], *shuffled]:
            heat.record(channel, 3)
        heat.close_window(1.0)
        rates = {rate.channel: rate for rate in heat.top(100)}
        for channel, count in published.items():
            rate = rates.get(channel)
            estimate, error = (
                (rate.publications_per_s, rate.publications_error_per_s) if rate else (0, 0)
            )
            checked += 1
            if abs(estimate - count) > error:
                misses += 1
            if rate is not None:  # three deliveries each: the same ratio
                assert rate.deliveries_per_s == 3 * rate.publications_per_s
    assert checked == 3000
    assert misses <= 15


def test_sampled_estimates_are_unbiased_over_many_windows() -> None:
    # The mean of the estimates of a channel's publications over many seeded windows
    # is its true count (the samples stand for sample_every each).
    true_count = 5000
    estimates = []
    for seed in range(200):
        heat = ChannelHeat(capacity=8, limit=32, sample_every=16, seed=seed)
        for _ in range(EXACT_PER_WINDOW):
            heat.record(LOBBY, 1)
        for _ in range(true_count):
            heat.record(ROOM, 1)
        heat.close_window(1.0)
        rate = next(rate for rate in heat.top(5) if rate.channel == ROOM)
        estimates.append(rate.publications_per_s)
    mean = sum(estimates) / len(estimates)
    # The standard error of the mean: sqrt(n (S - 1)) / sqrt(200) = ~19 publications.
    assert abs(mean - true_count) < 5 * 19
    assert len(set(estimates)) > 10  # sampled indeed


def test_sample_every_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="sample_every"):
        ChannelHeat(capacity=8, limit=32, sample_every=0)
