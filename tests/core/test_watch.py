"""A channel watch (core/watch.py): what it can answer from memory, and what it leaves to
the broker. Pure, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Replay
from tidings.core.watch import ChannelWatch

CHANNEL = ChannelName("room:w")
EPOCH = "e1"
KEEP = 10


def publication(offset: int, epoch: str = EPOCH) -> Publication:
    return Publication(CHANNEL, epoch, offset, b"1", 1_000 + offset)


def fed(start: int, count: int) -> ChannelWatch:
    """A watch started at offset ``start`` that then received ``count`` publications."""
    watch = ChannelWatch(Position(EPOCH, start), (), KEEP)
    for offset in range(start + 1, start + count + 1):
        watch.receive_publication(publication(offset))
    return watch


@given(st.integers(0, 50), st.integers(0, 40), st.integers(0, 100), st.integers(1, 20))
def test_since_answers_exactly_the_later_kept_publications_or_leaves_it_to_the_broker(
    start: int, count: int, asked: int, limit: int
) -> None:
    watch = fed(start, count)
    head = start + count
    kept_from = max(start, head - KEEP)  # positions the watch can continue from
    answer = watch.since(Position(EPOCH, asked), limit)
    if kept_from <= asked <= head:
        assert isinstance(answer, Replay)
        expected = list(range(asked + 1, min(head, asked + limit) + 1))
        assert [p.offset for p in answer.publications] == expected
    else:
        assert answer is None  # older than kept, or ahead of the head: ask the broker


@given(st.integers(0, 50))
def test_a_position_of_another_epoch_is_left_to_the_broker(offset: int) -> None:
    assert fed(5, 5).since(Position("other", offset), 10) is None


def test_a_publication_that_does_not_follow_the_head_is_refused() -> None:
    watch = fed(3, 2)
    with pytest.raises(ValueError, match="does not follow"):
        watch.receive_publication(publication(7))
    with pytest.raises(ValueError, match="does not follow"):
        watch.receive_publication(publication(6, epoch="e2"))
    assert watch.head == Position(EPOCH, 5)


def test_a_watch_seeded_with_recent_publications_answers_from_them() -> None:
    recent = [publication(offset) for offset in (4, 5, 6)]
    watch = ChannelWatch(Position(EPOCH, 6), recent, KEEP)
    answer = watch.since(Position(EPOCH, 3), 10)
    assert isinstance(answer, Replay)
    assert [p.offset for p in answer.publications] == [4, 5, 6]
