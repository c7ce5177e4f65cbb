"""A channel's retained publications (core/history.py), bounded by size and by ttl."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.history import ChannelHistory, HistoryOptions
from tidings.core.publication import Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay

EPOCH = "k3J9"


def publication(offset: int, ts: int) -> Publication:
    return Publication(ChannelName("room:45"), EPOCH, offset, b"[%d]" % offset, ts)


def filled(
    size: int, ttl_ms: int, timestamps: list[int]
) -> tuple[ChannelHistory, list[Publication]]:
    """A history that retained one publication per timestamp, offsets from 1."""
    history = ChannelHistory(HistoryOptions(size, ttl_ms))
    published = [publication(offset, ts) for offset, ts in enumerate(timestamps, start=1)]
    for p in published:
        history.retain(p, now_ms=p.ts)
    return history, published


@pytest.mark.parametrize(("size", "ttl_ms"), [(-1, 1000), (10, 0), (10, -5)])
def test_history_options_refuse_a_negative_size_or_a_non_positive_ttl(
    size: int, ttl_ms: int
) -> None:
    with pytest.raises(ValueError, match=r"history (size|ttl) must be"):
        HistoryOptions(size, ttl_ms)


def test_history_since_offset_zero_of_an_empty_history_replays_nothing() -> None:
    history = ChannelHistory(HistoryOptions(10, 1000))
    assert history.since(Position(EPOCH, 0), EPOCH, 0, now_ms=0, limit=None) == Replay(())


def test_history_since_the_head_replays_nothing() -> None:
    history, _ = filled(10, 1000, [1, 2, 3])
    assert history.since(Position(EPOCH, 3), EPOCH, 3, now_ms=3, limit=None) == Replay(())


def test_history_since_a_position_ahead_of_the_head_reports_gap() -> None:
    history, _ = filled(10, 1000, [1, 2, 3])
    assert history.since(Position(EPOCH, 4), EPOCH, 3, now_ms=3, limit=None) == Gap(
        GapReason.AHEAD_OF_HEAD
    )


def test_history_since_a_position_of_an_unknown_epoch_reports_gap() -> None:
    history, _ = filled(10, 1000, [1, 2, 3])
    assert history.since(Position("gone", 1), EPOCH, 3, now_ms=3, limit=None) == Gap(
        GapReason.EPOCH_CHANGED
    )


def test_history_since_replays_the_later_publications_in_order() -> None:
    history, published = filled(10, 1000, [1, 2, 3, 4])
    assert history.since(Position(EPOCH, 1), EPOCH, 4, now_ms=4, limit=None) == Replay(
        tuple(published[1:])
    )


def test_history_since_reports_gap_when_offset_evicted_by_size() -> None:
    history, published = filled(3, 1000, [1, 2, 3, 4, 5])
    assert len(history) == 3
    assert history.since(Position(EPOCH, 1), EPOCH, 5, now_ms=5, limit=None) == Gap(
        GapReason.EVICTED
    )
    # the oldest still recoverable position is the one just before the window
    assert history.since(Position(EPOCH, 2), EPOCH, 5, now_ms=5, limit=None) == Replay(
        tuple(published[2:])
    )


def test_history_since_reports_gap_when_offset_evicted_by_ttl() -> None:
    history, published = filled(100, 50, [0, 10, 20])
    # at 65, ts 0 and 10 are older than 50 ms; ts 20 is not
    assert history.since(Position(EPOCH, 1), EPOCH, 3, now_ms=65, limit=None) == Gap(
        GapReason.EVICTED
    )
    assert history.since(Position(EPOCH, 2), EPOCH, 3, now_ms=65, limit=None) == Replay(
        (published[2],)
    )
    assert len(history) == 1


def test_history_keeps_a_publication_exactly_ttl_old_and_drops_it_one_ms_later() -> None:
    history, _ = filled(100, 50, [10])
    history.expire(now_ms=60)
    assert len(history) == 1
    history.expire(now_ms=61)
    assert len(history) == 0


def test_history_since_reports_gap_when_everything_expired() -> None:
    history, _ = filled(100, 50, [0, 1, 2])
    assert history.since(Position(EPOCH, 0), EPOCH, 3, now_ms=1000, limit=None) == Gap(
        GapReason.EVICTED
    )
    assert history.since(Position(EPOCH, 3), EPOCH, 3, now_ms=1000, limit=None) == Replay(())


def test_history_since_limit_cuts_a_replay() -> None:
    history, published = filled(10, 1000, [1, 2, 3, 4, 5, 6])
    assert history.since(Position(EPOCH, 1), EPOCH, 6, now_ms=6, limit=3) == Replay(
        tuple(published[1:4])
    )


def test_history_of_size_zero_keeps_nothing_so_any_miss_is_a_gap() -> None:
    history, _ = filled(0, 1000, [1, 2])
    assert len(history) == 0
    assert history.since(Position(EPOCH, 1), EPOCH, 2, now_ms=2, limit=None) == Gap(
        GapReason.EVICTED
    )
    assert history.since(Position(EPOCH, 2), EPOCH, 2, now_ms=2, limit=None) == Replay(())


def test_history_latest_returns_the_newest_retained_oldest_first() -> None:
    history, published = filled(4, 1000, [1, 2, 3, 4, 5, 6])
    assert history.latest(now_ms=6, limit=None) == tuple(published[2:])
    assert history.latest(now_ms=6, limit=2) == tuple(published[4:])
    assert history.latest(now_ms=6, limit=0) == ()


def test_history_latest_leaves_out_expired_publications() -> None:
    history, published = filled(10, 10, [0, 3, 9])
    assert len(history) == 3
    assert history.latest(now_ms=12, limit=None) == tuple(published[1:])


@given(
    size=st.integers(min_value=0, max_value=12),
    ttl_ms=st.integers(min_value=1, max_value=60),
    gaps_ms=st.lists(st.integers(min_value=0, max_value=20), max_size=30),
    data=st.data(),
)
def test_history_since_yields_exactly_the_later_publications_or_a_gap(
    size: int, ttl_ms: int, gaps_ms: list[int], data: st.DataObject
) -> None:
    timestamps: list[int] = []
    now = 0
    for gap in gaps_ms:
        now += gap
        timestamps.append(now)
    history, published = filled(size, ttl_ms, timestamps)
    head = len(published)
    now += data.draw(st.integers(min_value=0, max_value=80), label="later_ms")
    since = data.draw(st.integers(min_value=0, max_value=head + 2), label="since")
    epoch = data.draw(st.sampled_from([EPOCH, "other"]), label="epoch")
    limit = data.draw(st.none() | st.integers(min_value=0, max_value=head + 1), label="limit")

    result = history.since(Position(epoch, since), EPOCH, head, now_ms=now, limit=limit)

    # Model: kept are the last `size` publications that are at most ttl_ms old.
    kept = [p for p in published[max(0, head - size) :] if p.ts >= now - ttl_ms]
    missed = published[since:]
    if epoch != EPOCH:
        assert result == Gap(GapReason.EPOCH_CHANGED)
    elif since > head:
        assert result == Gap(GapReason.AHEAD_OF_HEAD)
    elif all(p in kept for p in missed):
        assert result == Replay(tuple(missed if limit is None else missed[:limit]))
    else:
        assert result == Gap(GapReason.EVICTED)
    assert len(history) == len(kept)
