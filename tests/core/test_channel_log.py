"""The sequencing state of one channel (core/channel_log.py): offsets, dedupe, history."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.channel_log import Adoption, Appended, ChannelLog, Duplicate, plan_adoption
from tidings.core.dedupe import DedupeOptions
from tidings.core.history import HistoryOptions
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.recovery import Gap, GapReason, Replay

CHANNEL = ChannelName("room:45")
EPOCH = "k3J9"


def new_log(
    *, size: int = 100, ttl_ms: int = 60_000, window_ms: int = 1000, max_keys: int = 100
) -> ChannelLog:
    return ChannelLog(
        CHANNEL, EPOCH, HistoryOptions(size, ttl_ms), DedupeOptions(window_ms, max_keys)
    )


def appended(outcome: Appended | Duplicate) -> Publication:
    assert isinstance(outcome, Appended), outcome
    return outcome.publication


def test_channel_log_starts_at_offset_zero() -> None:
    log = new_log()
    assert log.head == Position(EPOCH, 0)
    assert log.latest(now_ms=0) == ()


def test_channel_log_first_publication_has_offset_one_and_carries_everything_given() -> None:
    log = new_log()
    info = ClientInfo("client-1", "alice")
    outcome = log.append(b'{"x":1}', now_ms=1234, key="k1", info=info)
    assert outcome == Appended(Publication(CHANNEL, EPOCH, 1, b'{"x":1}', 1234, "k1", info))
    assert log.head == Position(EPOCH, 1)


def test_channel_log_resumed_at_a_head_offset_continues_after_it() -> None:
    log = ChannelLog(CHANNEL, EPOCH, HistoryOptions(10, 1000), DedupeOptions(), head_offset=41)
    assert appended(log.append(b"1", now_ms=0)).offset == 42


@given(
    st.lists(
        st.tuples(st.none() | st.sampled_from("abc"), st.integers(min_value=0, max_value=400)),
        max_size=40,
    )
)
def test_channel_log_offsets_are_gap_free_from_one(steps: list[tuple[str | None, int]]) -> None:
    log = new_log()
    now = 0
    offsets: list[int] = []
    for key, elapsed in steps:
        now += elapsed
        outcome = log.append(b"null", now, key=key)
        if isinstance(outcome, Appended):
            offsets.append(outcome.publication.offset)
    assert offsets == list(range(1, len(offsets) + 1))
    assert log.head_offset == len(offsets)


def test_channel_log_repeated_key_within_the_window_returns_the_original_position() -> None:
    log = new_log(window_ms=1000)
    first = appended(log.append(b"1", now_ms=0, key="k"))
    log.append(b"2", now_ms=10)
    outcome = log.append(b"3", now_ms=1000, key="k")
    assert outcome == Duplicate(Position(EPOCH, first.offset))
    assert log.head == Position(EPOCH, 2)
    assert [p.data for p in log.latest(now_ms=1000)] == [b"1", b"2"]


def test_channel_log_repeated_key_after_the_window_publishes_again() -> None:
    log = new_log(window_ms=1000)
    log.append(b"1", now_ms=0, key="k")
    again = appended(log.append(b"1", now_ms=1001, key="k"))
    assert again.offset == 2
    assert log.head == Position(EPOCH, 2)
    # and the window now holds the new offset
    assert log.append(b"1", now_ms=1500, key="k") == Duplicate(Position(EPOCH, 2))


def test_channel_log_publications_without_key_are_never_duplicates() -> None:
    log = new_log()
    outcomes = [log.append(b"same", now_ms=0) for _ in range(3)]
    assert [appended(o).offset for o in outcomes] == [1, 2, 3]


def test_channel_log_same_key_in_another_channel_log_is_not_a_duplicate() -> None:
    one, other = new_log(), new_log()
    one.append(b"1", now_ms=0, key="k")
    assert appended(other.append(b"1", now_ms=0, key="k")).offset == 1


def test_channel_log_dedupe_window_is_bounded_by_max_keys() -> None:
    log = new_log(window_ms=1_000_000, max_keys=2)
    for key in "abc":
        log.append(key.encode(), now_ms=0, key=key)
    # a was pushed out by c; b and c are still remembered
    assert appended(log.append(b"a", now_ms=1, key="a")).offset == 4
    assert log.append(b"c", now_ms=1, key="c") == Duplicate(Position(EPOCH, 3))
    assert appended(log.append(b"b", now_ms=1, key="b")).offset == 5


@given(
    window_ms=st.integers(min_value=1, max_value=100),
    max_keys=st.integers(min_value=1, max_value=5),
    steps=st.lists(
        st.tuples(st.none() | st.sampled_from("abcdef"), st.integers(min_value=0, max_value=40)),
        max_size=50,
    ),
)
def test_channel_log_duplicate_iff_key_seen_within_window_and_newest_max_keys(
    window_ms: int, max_keys: int, steps: list[tuple[str | None, int]]
) -> None:
    log = new_log(window_ms=window_ms, max_keys=max_keys)
    keyed: list[Publication] = []  # appended publications that carry a key, in order
    now = 0
    for key, elapsed in steps:
        now += elapsed
        head_before = log.head
        outcome = log.append(b"0", now, key=key)
        original = None
        if key is not None:
            last = max((i for i, p in enumerate(keyed) if p.key == key), default=None)
            if last is not None:
                newer = len(keyed) - 1 - last
                if keyed[last].ts >= now - window_ms and newer < max_keys:
                    original = keyed[last]
        if original is not None:
            assert outcome == Duplicate(original.position)
            assert log.head == head_before
        else:
            publication = appended(outcome)
            assert publication.offset == head_before.offset + 1
            if key is not None:
                keyed.append(publication)


def test_channel_log_since_replays_from_a_position_with_a_limit() -> None:
    log = new_log()
    published = [appended(log.append(b"%d" % i, now_ms=i)) for i in range(5)]
    assert log.since(Position(EPOCH, 0), now_ms=5) == Replay(tuple(published))
    assert log.since(Position(EPOCH, 1), now_ms=5, limit=2) == Replay(tuple(published[1:3]))
    assert log.since(log.head, now_ms=5) == Replay(())


def test_channel_log_since_reports_gaps() -> None:
    log = new_log(size=2)
    for i in range(4):
        log.append(b"0", now_ms=i)
    assert log.since(Position(EPOCH, 1), now_ms=4) == Gap(GapReason.EVICTED)
    assert log.since(Position(EPOCH, 5), now_ms=4) == Gap(GapReason.AHEAD_OF_HEAD)
    assert log.since(Position("older", 4), now_ms=4) == Gap(GapReason.EPOCH_CHANGED)


def test_channel_log_since_reports_gap_once_history_expired() -> None:
    log = new_log(ttl_ms=100)
    log.append(b"0", now_ms=0)
    log.append(b"0", now_ms=50)
    assert log.since(Position(EPOCH, 0), now_ms=150) == Gap(GapReason.EVICTED)
    assert [p.offset for p in log.latest(now_ms=150)] == [2]


def test_channel_log_restore_takes_publications_as_already_sequenced() -> None:
    log = new_log(window_ms=1000)
    stored = [
        Publication(CHANNEL, EPOCH, 1, b"1", 100, "k1"),
        Publication(CHANNEL, EPOCH, 2, b"2", 200),
    ]
    for p in stored:
        log.restore(p, now_ms=300)
    assert log.head == Position(EPOCH, 2)
    assert log.latest(now_ms=300) == tuple(stored)
    # the restored key is in the dedupe window, timed from its publication
    assert log.append(b"x", now_ms=1100, key="k1") == Duplicate(Position(EPOCH, 1))
    assert appended(log.append(b"x", now_ms=1101, key="k1")).offset == 3


def test_channel_log_restored_with_a_repeated_key_forgets_older_keys_after_the_window() -> None:
    log = new_log(window_ms=100)
    for p in [
        Publication(CHANNEL, EPOCH, 1, b"1", 0, "a"),
        Publication(CHANNEL, EPOCH, 2, b"2", 50, "b"),
        Publication(CHANNEL, EPOCH, 3, b"3", 200, "a"),  # a again, after its window
    ]:
        log.restore(p, now_ms=200)
    # b was published 150 ms ago, outside the 100 ms window: it must publish again
    assert appended(log.append(b"2", now_ms=200, key="b")).offset == 4


# -- expiry of idle channels (the brokers' sweep) ----------------------------------------


def test_expire_says_bare_only_once_history_and_keys_are_past_their_time() -> None:
    log = new_log(ttl_ms=10_000, window_ms=20_000)
    log.append(b"1", now_ms=1_000, key="k")
    assert log.expire(now_ms=5_000) is False  # both still within their time
    assert log.expire(now_ms=11_001) is False  # history expired; the key is remembered
    assert log.latest(now_ms=11_001) == ()
    assert log.expire(now_ms=21_001) is True
    assert log.head == Position(EPOCH, 1)


def test_expire_of_a_log_that_keeps_no_history_waits_for_its_keys_only() -> None:
    log = new_log(size=0, window_ms=1_000)
    log.append(b"1", now_ms=0)
    assert log.expire(now_ms=0) is True
    log.append(b"2", now_ms=0, key="k")
    assert log.expire(now_ms=500) is False
    assert log.expire(now_ms=1_001) is True


@given(
    head=st.integers(min_value=1, max_value=20),
    epoch=st.sampled_from([EPOCH, "other"]),
    offset=st.integers(min_value=0, max_value=25),
    limit=st.none() | st.integers(min_value=1, max_value=5),
)
def test_a_bare_log_and_its_epoch_and_head_alone_answer_every_position_alike(
    head: int, epoch: str, offset: int, limit: int | None
) -> None:
    log = new_log(ttl_ms=1_000, window_ms=1_000)
    for n in range(head):
        log.append(b"%d" % n, now_ms=0, key=f"k{n}")
    now_ms = 5_000
    assert log.expire(now_ms)
    kept = ChannelLog(
        CHANNEL, log.epoch, HistoryOptions(100, 1_000), DedupeOptions(), head_offset=log.head_offset
    )
    position = Position(epoch, offset)
    assert kept.since(position, now_ms, limit) == log.since(position, now_ms, limit)
    assert kept.head == log.head


# Adoption: what a store keeps of publications handed over at their positions


def adopted(epoch: str, first: int, last: int) -> list[Publication]:
    return [
        Publication(CHANNEL_OF_ADOPTION, epoch, n, b"%d" % n, n) for n in range(first, last + 1)
    ]


CHANNEL_OF_ADOPTION = ChannelName("doc:1")


@given(
    held=st.none() | st.tuples(st.sampled_from(["e1", "e2"]), st.integers(0, 30)),
    first=st.integers(1, 30),
    count=st.integers(0, 10),
)
def test_plan_adoption_ends_at_the_givers_head_with_every_new_publication_once(
    held: tuple[str, int] | None, first: int, count: int
) -> None:
    held_position = None if held is None else Position(*held)
    sent = adopted("e1", first, first + count - 1)
    top = first + count - 1 if sent else first
    plan = plan_adoption(held_position, "e1", sent, top)
    # Apply the plan to a log as a store would, then check what it holds.
    if plan.restart_at is None:
        assert held_position is not None
        assert held_position.epoch == "e1"
        head = held_position.offset
    else:
        head = plan.restart_at
    for publication in plan.publications:
        assert publication.offset == head + 1
        head = publication.offset
    assert head == plan.head
    # Keys name offsets of their epoch: kept while it stays, never across a change.
    assert plan.keeps_keys == (held_position is not None and held_position.epoch == "e1")
    if held_position is not None and held_position.epoch == "e1":
        assert plan.head == max(held_position.offset, top)
        # Nothing already held is stored again.
        assert all(p.offset > held_position.offset for p in plan.publications)
    else:
        assert plan.head == top
        assert list(plan.publications) == sent


def test_plan_adoption_continues_a_held_head_without_restarting() -> None:
    plan = plan_adoption(Position("e1", 3), "e1", adopted("e1", 2, 5), 5)
    assert plan.restart_at is None
    assert [p.offset for p in plan.publications] == [4, 5]


def test_plan_adoption_restarts_a_channel_of_another_epoch() -> None:
    plan = plan_adoption(Position("e0", 9), "e1", adopted("e1", 4, 6), 6)
    assert plan.restart_at == 3
    assert [p.offset for p in plan.publications] == [4, 5, 6]


def test_plan_adoption_restarts_past_a_hole_in_the_same_epoch() -> None:
    plan = plan_adoption(Position("e1", 2), "e1", adopted("e1", 5, 6), 6)
    assert plan.restart_at == 4


def test_plan_adoption_moves_the_head_of_a_channel_retaining_nothing() -> None:
    assert plan_adoption(None, "e1", [], 7) == Adoption(7, (), 7, keeps_keys=False)


def test_plan_adoption_keeps_the_keys_past_a_hole_in_the_same_epoch_only() -> None:
    past_a_hole = plan_adoption(Position("e1", 2), "e1", [], 7)
    assert (past_a_hole.restart_at, past_a_hole.keeps_keys) == (7, True)
    other_epoch = plan_adoption(Position("e0", 2), "e1", [], 7)
    assert (other_epoch.restart_at, other_epoch.keeps_keys) == (7, False)


def test_plan_adoption_refuses_publications_that_do_not_end_at_the_top() -> None:
    with pytest.raises(ValueError, match="end at"):
        plan_adoption(None, "e1", adopted("e1", 1, 3), 4)
    with pytest.raises(ValueError, match="consecutive"):
        plan_adoption(None, "e1", [*adopted("e1", 1, 1), *adopted("e1", 3, 3)], 3)
