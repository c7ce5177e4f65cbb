"""The client's position tracker (client/positions.py): each offset once, in order, and
every gap told, whatever the server repeats and however it is delivered."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.catchup_cases import CATCHUP_CASES, CatchUpCase
from tidings.client.events import Event, GapNotice
from tidings.client.positions import PositionTracker
from tidings.core.catchup import CatchUp
from tidings.core.channel import ChannelName
from tidings.core.cursor import encode_cursor
from tidings.core.publication import Position, Publication

A = ChannelName("room:a")
B = ChannelName("room:b")
C = ChannelName("room:c")
CHANNELS = (A, B, C)
E1 = "epochOne"
E2 = "epochTwo"


def pub(channel: ChannelName, offset: int, epoch: str = E1) -> Publication:
    return Publication(channel, epoch, offset, b'{"n":%d}' % offset, 1_000 + offset)


def offsets_of(events: Sequence[Event], channel: ChannelName) -> list[int]:
    return [e.offset for e in events if isinstance(e, Publication) and e.channel == channel]


def check_story(events: Sequence[Event], channel: ChannelName, start: Position | None) -> None:
    """Each publication follows the last position, or a gap notice says where it jumped;
    no (epoch, offset) twice."""
    held = start
    seen: set[Position] = set()
    for event in events:
        if event.channel != channel:
            continue
        if isinstance(event, GapNotice):
            assert event.since == held
            held = event.position
            continue
        assert event.position not in seen
        seen.add(event.position)
        if held is not None:
            assert (event.epoch, event.offset) == (held.epoch, held.offset + 1)
        held = event.position


# -- the property: replays, live and duplicates in any interleaving ------------------------


@dataclass(frozen=True)
class Delivery:
    """The server sends offsets ``first..last`` of ``channel`` by ``way``."""

    channel: ChannelName
    back: int  # how far before the next new offset the delivery starts (a repeat)
    length: int
    way: str  # "live", "subscribed" (a resubscribe's replay) or "page" (a poll answer)


deliveries = st.lists(
    st.builds(
        Delivery,
        st.sampled_from(CHANNELS),
        st.integers(min_value=0, max_value=6),
        st.integers(min_value=1, max_value=6),
        st.sampled_from(["live", "subscribed", "page"]),
    ),
    max_size=40,
)


@given(deliveries)
def test_tracker_yields_each_offset_once_in_order_for_any_interleaving(
    steps: list[Delivery],
) -> None:
    start = {channel: Position(E1, 0) for channel in CHANNELS}
    tracker = PositionTracker(CHANNELS, start)
    sent = dict.fromkeys(CHANNELS, 0)  # the highest offset the server has sent per channel
    events: list[Event] = []
    for step in steps:
        # The server never skips: a delivery starts at most at the next new offset.
        first = max(1, sent[step.channel] + 1 - step.back)
        last = first + step.length - 1
        batch = [pub(step.channel, offset) for offset in range(first, last + 1)]
        sent[step.channel] = max(sent[step.channel], last)
        if step.way == "live":
            for publication in batch:
                events += tracker.receive_publication(publication)
        elif step.way == "subscribed":
            events += tracker.receive_subscribed(
                step.channel, Position(E1, sent[step.channel]), recovered=True
            )
            for publication in batch:
                events += tracker.receive_publication(publication)
        else:
            after = {**tracker.positions, step.channel: Position(E1, last)}
            events += tracker.receive_page(batch, after, recovered=True)
    assert not any(isinstance(event, GapNotice) for event in events)
    for channel in CHANNELS:
        assert offsets_of(events, channel) == list(range(1, sent[channel] + 1))
        assert tracker.positions[channel] == Position(E1, sent[channel])


@given(
    st.lists(
        st.tuples(
            st.sampled_from(CHANNELS),
            st.sampled_from([E1, E2, "epochThree"]),
            st.integers(min_value=1, max_value=30),
        ),
        max_size=60,
    )
)
def test_tracker_never_repeats_and_tells_every_jump_whatever_arrives(
    arrivals: list[tuple[ChannelName, str, int]],
) -> None:
    start = Position(E1, 0)
    tracker = PositionTracker(CHANNELS, dict.fromkeys(CHANNELS, start))
    events: list[Event] = []
    for channel, epoch, offset in arrivals:
        events += tracker.receive_publication(pub(channel, offset, epoch))
    for channel in CHANNELS:
        check_story(events, channel, start)


@given(
    st.lists(st.integers(min_value=0, max_value=4), min_size=1, max_size=10),
    st.integers(min_value=0, max_value=5),
)
def test_tracker_tells_each_epoch_change_once_and_drops_the_old_epochs_repeats(
    published_per_epoch: list[int], stale: int
) -> None:
    epochs = [f"epoch{n}" for n in range(len(published_per_epoch))]
    tracker = PositionTracker([A])
    events = tracker.receive_subscribed(A, Position(epochs[0], 0), recovered=False)
    for index, (epoch, count) in enumerate(zip(epochs, published_per_epoch, strict=True)):
        if index:
            # The server lost its history: the resubscribe is answered not recovered.
            events += tracker.receive_subscribed(A, Position(epoch, 0), recovered=False)
            # Late repeats of the previous epoch are not publications of this one.
            for offset in range(1, stale + 1):
                events += tracker.receive_publication(pub(A, offset, epochs[index - 1]))
        for offset in range(1, count + 1):
            events += tracker.receive_publication(pub(A, offset, epoch))
    gaps = [event for event in events if isinstance(event, GapNotice)]
    assert [gap.position for gap in gaps] == [Position(epoch, 0) for epoch in epochs[1:]]
    check_story(events, A, Position(epochs[0], 0))
    assert len(events) == len(gaps) + sum(published_per_epoch)


@st.composite
def server_inputs(draw: st.DrawFn) -> list[tuple[str, ChannelName, Position, bool]]:
    """Anything a server, however wrong, could send: publications, subscribe answers and
    poll starts, in any epoch, at any offset."""
    kind = st.sampled_from(["publication", "subscribed", "page"])
    position = st.builds(Position, st.sampled_from([E1, E2, "epochThree"]), st.integers(0, 12))
    return draw(
        st.lists(st.tuples(kind, st.sampled_from(CHANNELS), position, st.booleans()), max_size=60)
    )


@given(server_inputs())
def test_tracker_never_lets_the_same_offset_through_twice_whatever_the_server_says(
    inputs: list[tuple[str, ChannelName, Position, bool]],
) -> None:
    start = Position(E1, 0)
    tracker = PositionTracker(CHANNELS, dict.fromkeys(CHANNELS, start))
    events: list[Event] = []
    for kind, channel, position, recovered in inputs:
        if kind == "publication" and position.offset > 0:
            events += tracker.receive_publication(pub(channel, position.offset, position.epoch))
        elif kind == "subscribed":
            events += tracker.receive_subscribed(channel, position, recovered=recovered)
        else:
            after = {**tracker.positions, channel: position}
            events += tracker.receive_page([], after, recovered=recovered)
    for channel in CHANNELS:
        check_story(events, channel, start)
        highest: dict[str, int] = {}
        for event in events:
            if event.channel == channel:
                epoch, offset = event.position.epoch, event.position.offset
                assert offset >= highest.get(epoch, 0)  # never backwards in an epoch
                highest[epoch] = offset


# -- subscribe answers ------------------------------------------------------------------


def test_subscribed_without_a_position_starts_there_and_records_the_origin() -> None:
    tracker = PositionTracker([A, B], {A: Position(E1, 3)})
    assert tracker.receive_subscribed(B, Position(E1, 7), recovered=False) == []
    assert tracker.positions == {A: Position(E1, 3), B: Position(E1, 7)}
    assert tracker.origins == {A: Position(E1, 3), B: Position(E1, 7)}
    assert tracker.receive_publication(pub(B, 8)) == [pub(B, 8)]
    assert tracker.origins[B] == Position(E1, 7)


def test_subscribed_not_recovered_reports_a_gap_and_moves_to_the_servers_position() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 3)})
    events = tracker.receive_subscribed(A, Position(E2, 0), recovered=False)
    assert events == [GapNotice(A, Position(E1, 3), Position(E2, 0))]
    assert tracker.receive_publication(pub(A, 4, E1)) == []  # the lost epoch's
    assert tracker.receive_publication(pub(A, 1, E2)) == [pub(A, 1, E2)]


def test_subscribed_recovered_keeps_the_position_until_the_replay_arrives() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 3)})
    assert tracker.receive_subscribed(A, Position(E1, 5), recovered=True) == []
    assert tracker.positions == {A: Position(E1, 3)}
    replay = [pub(A, 4), pub(A, 5)]
    assert [e for p in replay for e in tracker.receive_publication(p)] == replay


def test_a_server_position_behind_ours_in_the_same_epoch_moves_nothing() -> None:
    # A node that has not loaded (or replicated) the channel yet answers from behind.
    tracker = PositionTracker([A], {A: Position(E1, 3)})
    assert tracker.receive_subscribed(A, Position(E1, 0), recovered=False) == []
    assert tracker.receive_page([], {A: Position(E1, 1)}, recovered=False) == []
    assert tracker.positions == {A: Position(E1, 3)}
    assert tracker.since_params() == [("since", f"{E1}:3")]
    assert tracker.receive_publication(pub(A, 2)) == []
    assert tracker.receive_publication(pub(A, 4)) == [pub(A, 4)]


def test_returning_to_a_left_epoch_never_repeats_what_was_held_in_it() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 3)})
    tracker.receive_subscribed(A, Position(E2, 0), recovered=False)
    events = tracker.receive_subscribed(A, Position(E1, 1), recovered=False)
    assert events == [GapNotice(A, Position(E2, 0), Position(E1, 3))]
    assert tracker.receive_publication(pub(A, 2)) == []


def test_a_jump_the_server_did_not_announce_is_still_told() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 3)})
    assert tracker.receive_publication(pub(A, 6)) == [
        GapNotice(A, Position(E1, 3), Position(E1, 5)),
        pub(A, 6),
    ]


def test_publications_of_other_channels_are_ignored() -> None:
    tracker = PositionTracker([A])
    assert tracker.receive_publication(pub(B, 1)) == []
    assert tracker.positions == {}


# -- poll answers -------------------------------------------------------------------------


def test_page_not_recovered_reports_the_gap_only_for_the_channel_that_moved() -> None:
    tracker = PositionTracker([A, B], {A: Position(E1, 2), B: Position(E1, 5)})
    after = {A: Position(E1, 4), B: Position(E1, 9)}
    events = tracker.receive_page([pub(A, 3), pub(A, 4)], after, recovered=False)
    assert events == [GapNotice(B, Position(E1, 5), Position(E1, 9)), pub(A, 3), pub(A, 4)]
    assert tracker.positions == after


def test_page_of_a_moved_channel_with_publications_starts_before_the_first() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 5)})
    page = [pub(A, 1, E2), pub(A, 2, E2)]
    events = tracker.receive_page(page, {A: Position(E2, 2)}, recovered=False)
    assert events == [GapNotice(A, Position(E1, 5), Position(E2, 0)), *page]


def test_first_page_without_positions_starts_every_channel_where_the_cursor_says() -> None:
    tracker = PositionTracker([A, B])
    after = {A: Position(E1, 4), B: Position(E1, 0)}
    assert tracker.receive_page([], after, recovered=False) == []
    assert tracker.positions == after
    assert tracker.origins == after


def test_recovered_page_repeating_what_is_held_yields_nothing_new() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 4)})
    page = [pub(A, 3), pub(A, 4), pub(A, 5)]
    assert tracker.receive_page(page, {A: Position(E1, 5)}, recovered=True) == [pub(A, 5)]


# -- resuming over HTTP ---------------------------------------------------------------


def test_since_params_name_every_channel_in_order_when_all_have_positions() -> None:
    tracker = PositionTracker([B, A], {A: Position(E1, 3), B: Position(E2, 0)})
    assert tracker.since_params() == [("since", f"{E2}:0"), ("since", f"{E1}:3")]


def test_since_params_of_some_channels_give_the_others_a_position_never_recovered() -> None:
    tracker = PositionTracker([A, B], {A: Position(E1, 3)})
    assert tracker.since_params() == [("since", f"{E1}:3"), ("since", "unknown-position:0")]


def test_since_params_without_positions_are_empty() -> None:
    assert PositionTracker([A]).since_params() == []


def test_resume_cursor_is_kept_only_while_it_names_the_positions() -> None:
    tracker = PositionTracker([A], {A: Position(E1, 3)})
    current = encode_cursor({A: Position(E1, 3)})
    assert tracker.resume_cursor(current) == current
    assert tracker.resume_cursor(encode_cursor({A: Position(E1, 2)})) is None
    assert tracker.resume_cursor("not-a-cursor") is None
    assert tracker.resume_cursor(None) is None


@pytest.mark.parametrize(
    ("channels", "since"),
    [
        ([], {}),
        ([A, A], {}),
        ([A], {B: Position(E1, 1)}),
    ],
)
def test_tracker_refuses_misuse(
    channels: list[ChannelName], since: dict[ChannelName, Position]
) -> None:
    with pytest.raises(ValueError, match=r"channel|since"):
        PositionTracker(channels, since)


def tracker_holding(held: Position | None, left: frozenset[str]) -> PositionTracker:
    """A tracker of channel A at ``held``, having left the epochs ``left`` on the way."""
    assert held is not None or not left, "a channel leaves epochs only once it holds one"
    tracker = PositionTracker([A])
    for epoch in sorted(left):
        tracker.receive_subscribed(A, Position(epoch, 1), recovered=False)
    if held is not None:
        tracker.receive_subscribed(A, held, recovered=False)
        assert tracker.positions == {A: held}
    return tracker


@pytest.mark.parametrize("case", CATCHUP_CASES, ids=lambda case: case.why)
def test_a_live_publication_is_judged_by_the_servers_rule(case: CatchUpCase) -> None:
    """The shared table (clients/catchup_cases.json; the JS client's tests read it too)."""
    tracker = tracker_holding(case.held, case.left)
    publication = pub(A, case.publication.offset, case.publication.epoch)
    events = tracker.receive_publication(publication)
    if case.outcome is CatchUp.ALREADY_HAD:
        assert events == []
        assert tracker.positions.get(A) == case.held
        return
    if case.outcome is CatchUp.DELIVER:
        assert events == [publication]
    else:  # a hole or a gap: told, then let through
        assert case.held is not None
        before = Position(publication.epoch, publication.offset - 1)
        assert events == [GapNotice(A, case.held, before), publication]
    assert tracker.positions == {A: publication.position}


def test_a_part_of_a_tracker_holds_exactly_what_it_held_of_those_channels() -> None:
    tracker = PositionTracker(CHANNELS, {A: Position(E1, 3)})
    tracker.receive_subscribed(B, Position(E1, 7), recovered=False)
    tracker.receive_publication(pub(A, 4))
    tracker.receive_publication(pub(A, 1, E2))  # A moves to epoch two, leaving epoch one
    moving = tracker.part([A, C])
    assert moving.channels == (A, C)
    assert moving.positions == {A: Position(E2, 1)}
    assert moving.origins == {A: Position(E1, 3)}
    # Epoch one was left: its publications are dropped by the part as by the whole.
    assert moving.receive_publication(pub(A, 5)) == []
    assert tracker.part([B]).positions == {B: Position(E1, 7)}
    with pytest.raises(ValueError, match="not tracked here"):
        tracker.part([ChannelName("room:z")])
