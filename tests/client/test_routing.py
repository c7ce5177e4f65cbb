"""The client's owner-routing bookkeeping (client/routing.py): how a redirect splits a
subscription's channels, with their positions, and the bound on redirects in a row."""

from __future__ import annotations

import pytest

from tidings.client.errors import TooManyRedirects
from tidings.client.positions import PositionTracker
from tidings.client.routing import MAX_REDIRECTS, ChannelGroup, Redirects, split_group
from tidings.core.channel import ChannelName
from tidings.core.publication import Position

A, B, C = ChannelName("doc:a"), ChannelName("doc:b"), ChannelName("doc:c")


def test_moved_channels_leave_with_their_positions_one_group_per_owner() -> None:
    tracker = PositionTracker([A, B, C], {A: Position("e", 3), B: Position("e", 5)})
    group = ChannelGroup("http://a:1", tracker)
    kept, moved = split_group(group, {B: "http://b:1", C: "http://c:1", ChannelName("x"): "u"})
    assert kept is not None
    assert (kept.url, kept.tracker.channels, kept.tracker.positions) == (
        "http://a:1",
        (A,),
        {A: Position("e", 3)},
    )
    assert [(g.url, g.tracker.channels, g.tracker.positions) for g in moved] == [
        ("http://b:1", (B,), {B: Position("e", 5)}),
        ("http://c:1", (C,), {}),
    ]


def test_a_group_whose_channels_all_move_keeps_nothing() -> None:
    group = ChannelGroup("http://a:1", PositionTracker([A, B]))
    kept, moved = split_group(group, {A: "http://b:1", B: "http://b:1"})
    assert kept is None
    assert [(g.url, g.tracker.channels) for g in moved] == [("http://b:1", (A, B))]


def test_a_channel_redirected_more_than_five_times_in_a_row_is_too_many() -> None:
    redirects = Redirects()
    for _ in range(MAX_REDIRECTS):
        redirects.receive_moved(A, "http://b:1")
    redirects.receive_moved(B, "http://b:1")  # counted per channel
    with pytest.raises(TooManyRedirects, match="doc:a was redirected 5 times in a row"):
        redirects.receive_moved(A, "http://b:1")
    redirects.receive_served([A])
    redirects.receive_moved(A, "http://b:1")  # served in between: counted afresh
