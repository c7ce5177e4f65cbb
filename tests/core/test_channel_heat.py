"""Hot channels (core/channel_heat.py): rates per window, busiest first, and one crossing
per channel each time it becomes hot."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.channel_heat import ChannelHeat

ROOM = ChannelName("room:1")
LOBBY = ChannelName("room:lobby")


def test_rates_are_counts_over_the_window_busiest_first() -> None:
    heat = ChannelHeat(capacity=8)
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
    heat = ChannelHeat(capacity=8)
    for _ in range(100):
        heat.record(ROOM, 10)
    heat.close_window(1.0)
    heat.record(LOBBY, 1)
    assert heat.top(1)[0].channel == ROOM  # read until the next window closes
    heat.close_window(1.0)
    assert [rate.channel for rate in heat.top(5)] == [LOBBY]


def test_channel_without_subscribers_has_zero_deliveries_while_nothing_was_evicted() -> None:
    heat = ChannelHeat(capacity=8)
    heat.record(ROOM, 0)
    heat.close_window(1.0)
    assert heat.top(1)[0].deliveries_per_s == 0.0


def test_channel_not_counted_in_a_purged_summary_has_unknown_rate() -> None:
    heat = ChannelHeat(capacity=1)
    for n in range(5):
        heat.record(ChannelName(f"a:{n}"), 5 + n)  # the fifth purges the deliveries
    heat.record(ROOM, 0)
    heat.close_window(1.0)
    room = next(rate for rate in heat.top(4) if rate.channel == ROOM)
    assert room.deliveries_per_s is None


def test_crossing_is_reported_once_until_the_channel_cools_down() -> None:
    heat = ChannelHeat(capacity=8, deliveries_threshold_per_s=100.0)
    crossings = []
    for window_deliveries in (1000, 1000, 10, 1000):
        heat.record(ROOM, window_deliveries)
        crossings.append([rate.channel for rate in heat.close_window(1.0)])
    assert crossings == [[ROOM], [], [], [ROOM]]


def test_no_crossings_without_a_threshold() -> None:
    heat = ChannelHeat(capacity=8)
    heat.record(ROOM, 10**9)
    assert heat.close_window(1.0) == []


events = st.lists(
    st.tuples(st.integers(min_value=0, max_value=300), st.integers(min_value=0, max_value=40)),
    max_size=300,
)


@given(st.integers(min_value=1, max_value=16), events)
def test_rates_stay_bounded_by_capacity_and_never_underestimate(
    capacity: int, stream: list[tuple[int, int]]
) -> None:
    heat = ChannelHeat(capacity=capacity)
    published: dict[ChannelName, int] = {}
    delivered: dict[ChannelName, int] = {}
    for number, deliveries in stream:
        channel = ChannelName(f"c:{number}")
        heat.record(channel, deliveries)
        published[channel] = published.get(channel, 0) + 1
        delivered[channel] = delivered.get(channel, 0) + deliveries
    heat.close_window(2.0)
    rates = heat.top(10**6)
    assert len(rates) <= 8 * capacity
    for rate in rates:
        if rate.publications_per_s is not None:
            assert rate.publications_per_s * 2.0 >= published[rate.channel]
            assert (rate.publications_per_s - rate.publications_error_per_s) * 2.0 <= published[
                rate.channel
            ]
        if rate.deliveries_per_s is not None:
            assert rate.deliveries_per_s * 2.0 >= delivered[rate.channel]
