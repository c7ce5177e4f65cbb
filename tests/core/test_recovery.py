"""The recovery decision (core/recovery.py): exactly the later publications, or a Gap."""

from __future__ import annotations

from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay, decide_recovery, latest

EPOCH = "k3J9"


def publications(first: int, last: int, epoch: str = EPOCH) -> list[Publication]:
    """Consecutive publications ``first..last`` (inclusive) of one channel."""
    return [
        Publication(ChannelName("room:45"), epoch, offset, b'{"n":%d}' % offset, 1000 + offset)
        for offset in range(first, last + 1)
    ]


def test_recovery_of_an_empty_channel_from_offset_zero_replays_nothing() -> None:
    assert decide_recovery(Position(EPOCH, 0), EPOCH, 0, []) == Replay(())


def test_recovery_at_the_head_replays_nothing() -> None:
    retained = publications(1, 5)
    assert decide_recovery(Position(EPOCH, 5), EPOCH, 5, retained) == Replay(())


def test_recovery_at_the_head_replays_nothing_even_when_history_is_empty() -> None:
    assert decide_recovery(Position(EPOCH, 9), EPOCH, 9, []) == Replay(())


def test_recovery_ahead_of_the_head_reports_gap() -> None:
    retained = publications(1, 5)
    assert decide_recovery(Position(EPOCH, 6), EPOCH, 5, retained) == Gap(GapReason.AHEAD_OF_HEAD)


def test_recovery_of_an_empty_channel_from_a_later_offset_reports_ahead_of_head() -> None:
    assert decide_recovery(Position(EPOCH, 3), EPOCH, 0, []) == Gap(GapReason.AHEAD_OF_HEAD)


@pytest.mark.parametrize("offset", [0, 3, 5, 99])
def test_recovery_from_another_epoch_reports_epoch_changed_whatever_the_offset(
    offset: int,
) -> None:
    retained = publications(1, 5)
    assert decide_recovery(Position("old", offset), EPOCH, 5, retained) == Gap(
        GapReason.EPOCH_CHANGED
    )


def test_recovery_replays_every_publication_after_the_position_in_order() -> None:
    retained = publications(1, 5)
    assert decide_recovery(Position(EPOCH, 2), EPOCH, 5, retained) == Replay(tuple(retained[2:]))


def test_recovery_from_just_before_the_oldest_retained_replays_all_retained() -> None:
    retained = publications(4, 8)
    assert decide_recovery(Position(EPOCH, 3), EPOCH, 8, retained) == Replay(tuple(retained))


def test_recovery_reports_gap_when_the_successor_was_evicted() -> None:
    retained = publications(4, 8)
    assert decide_recovery(Position(EPOCH, 2), EPOCH, 8, retained) == Gap(GapReason.EVICTED)


def test_recovery_reports_gap_when_everything_behind_the_head_was_evicted() -> None:
    assert decide_recovery(Position(EPOCH, 2), EPOCH, 8, []) == Gap(GapReason.EVICTED)


def test_recovery_limit_cuts_the_replay_to_its_first_publications() -> None:
    retained = publications(1, 10)
    assert decide_recovery(Position(EPOCH, 3), EPOCH, 10, retained, limit=2) == Replay(
        tuple(retained[3:5])
    )


def test_recovery_limit_of_zero_replays_nothing() -> None:
    retained = publications(1, 10)
    assert decide_recovery(Position(EPOCH, 3), EPOCH, 10, retained, limit=0) == Replay(())


def test_recovery_limit_does_not_turn_an_eviction_into_a_replay() -> None:
    retained = publications(5, 10)
    assert decide_recovery(Position(EPOCH, 1), EPOCH, 10, retained, limit=1) == Gap(
        GapReason.EVICTED
    )


def test_recovery_reads_a_deque_as_history_does() -> None:
    retained = deque(publications(3, 7))
    assert decide_recovery(Position(EPOCH, 4), EPOCH, 7, retained, limit=2) == Replay(
        (retained[2], retained[3])
    )


@given(
    head=st.integers(min_value=0, max_value=40),
    data=st.data(),
)
def test_recovery_gives_exactly_the_later_publications_or_a_gap(
    head: int, data: st.DataObject
) -> None:
    first_retained = data.draw(st.integers(min_value=1, max_value=head + 1), label="first")
    everything = publications(1, head)
    retained = everything[first_retained - 1 :]
    since = data.draw(st.integers(min_value=0, max_value=head + 3), label="since")
    epoch = data.draw(st.sampled_from([EPOCH, "other"]), label="epoch")
    limit = data.draw(st.none() | st.integers(min_value=0, max_value=head + 1), label="limit")

    result = decide_recovery(Position(epoch, since), EPOCH, head, retained, limit)

    missed = [p for p in everything if p.offset > since]
    if epoch != EPOCH:
        assert result == Gap(GapReason.EPOCH_CHANGED)
    elif since > head:
        assert result == Gap(GapReason.AHEAD_OF_HEAD)
    elif all(p in retained for p in missed):
        assert result == Replay(tuple(missed if limit is None else missed[:limit]))
    else:
        assert result == Gap(GapReason.EVICTED)


@pytest.mark.parametrize(
    ("limit", "expected"),
    [(None, [1, 2, 3, 4]), (10, [1, 2, 3, 4]), (4, [1, 2, 3, 4]), (2, [3, 4]), (0, []), (-1, [])],
)
def test_latest_returns_the_last_publications_oldest_first(
    limit: int | None, expected: list[int]
) -> None:
    assert [p.offset for p in latest(publications(1, 4), limit)] == expected


def test_latest_of_nothing_is_nothing() -> None:
    assert latest([], None) == ()
    assert latest(deque(), 3) == ()
