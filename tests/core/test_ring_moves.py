"""Moving connections when the ring changes (core/ring_moves.py): a connection moves
exactly when one of its channels is served elsewhere, to its user's owner first; the
times of the moves are in order and keep to the rate."""

from __future__ import annotations

import math
from typing import Final

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy
from tidings.core.placement import Moved
from tidings.core.ring import HashRing
from tidings.core.ring_moves import connection_move, move_times_ms
from tidings.core.routing import RingPlacement

NAMESPACES: Final = Namespaces({NamespaceName("inbox"): NamespaceOptions(policy=Policy.USER)})
URLS: Final = {"a": "http://a", "b": "http://b", "c": "http://c"}
HERE_NODE: Final = RingPlacement(HashRing(URLS), "a", URLS, NAMESPACES)
channels = st.lists(
    st.from_regex(r"(doc|inbox|user):[a-z0-9]{1,6}", fullmatch=True).map(ChannelName),
    max_size=8,
)
users = st.sampled_from(["", "u1", "u2", "u3", "u4"])


@settings(max_examples=300, deadline=None, derandomize=True)
@given(held=channels, user=users)
def test_a_connection_moves_exactly_when_one_of_its_channels_is_served_elsewhere(
    held: list[ChannelName], user: str
) -> None:
    move = connection_move(held, user, HERE_NODE, NAMESPACES)
    places = [HERE_NODE.place(channel) for channel in held]
    if all(not isinstance(place, Moved) for place in places):
        assert move is None
    else:
        assert move in places


@settings(max_examples=300, deadline=None, derandomize=True)
@given(held=channels, user=users.filter(bool))
def test_a_connection_whose_users_channels_moved_goes_to_its_users_owner(
    held: list[ChannelName], user: str
) -> None:
    own = ChannelName(f"inbox:{user}")
    move = connection_move([*held, own], user, HERE_NODE, NAMESPACES)
    owner = HERE_NODE.place(own)
    if isinstance(owner, Moved):
        assert move == owner


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    rate=st.floats(min_value=0.5, max_value=5000),
    jitters=st.lists(st.floats(min_value=0, max_value=1, exclude_max=True), max_size=300),
)
def test_moves_come_in_order_and_at_most_rate_plus_one_in_any_second(
    rate: float, jitters: list[float]
) -> None:
    times = move_times_ms(rate, jitters)
    assert times == sorted(times)
    limit = math.floor(rate) + 1
    for i, start in enumerate(times):
        # The moves in the half-open second [start, start + 1000).
        in_second = sum(1 for t in times[i:] if t < start + 1000)
        assert in_second <= limit + 1  # +1: milliseconds are rounded down
