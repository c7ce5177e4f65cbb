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
