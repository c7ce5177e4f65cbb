"""The ring scaling scenario's books (benchmarks/ring_ledger.py), pure: what counts as
lost, repeated and covered, and the two forms of the reconnect bound. The scenario's
verdicts rest on these, so they are checked on their own."""

from __future__ import annotations

from benchmarks.ring_ledger import Ack, Gap, Tally, excess_over_rate, max_in_any_second
from hypothesis import given
from hypothesis import strategies as st


def ack(seq: int, epoch: str, offset: int) -> Ack:
    return Ack(seq, "doc:1", epoch, offset, sent_s=float(seq))


def test_a_publication_never_received_nor_told_about_is_lost() -> None:
    tally = Tally("doc:1", "ws")
    tally.deliver("e1", 1, 1, 0.0)
    tally.deliver("e1", 3, 3, 0.0)
    acks = [ack(1, "e1", 1), ack(2, "e1", 2), ack(3, "e1", 3)]
    assert tally.lost(acks) == [acks[1]]
    assert tally.covered(acks) == []


def test_a_gap_covers_the_old_epoch_after_its_position_and_the_new_one_up_to_its_own() -> None:
    gap = Gap(at_s=5.0, since_epoch="e1", since_offset=2, epoch="e2", offset=4)
    assert not gap.covers(ack(1, "e1", 2))  # it had that one
    assert gap.covers(ack(2, "e1", 3))  # the old owner sequenced it after the position
    assert gap.covers(ack(3, "e2", 4))  # the new owner's, before the resume
    assert not gap.covers(ack(4, "e2", 5))  # after the resume: due
    assert not gap.covers(ack(5, "e3", 1))  # another epoch altogether


def test_a_missed_publication_under_a_gap_is_covered_not_lost() -> None:
    tally = Tally("doc:1", "sse")
    tally.deliver("e1", 1, 1, 0.0)
    tally.gaps.append(Gap(at_s=5.0, since_epoch="e1", since_offset=1, epoch="e2", offset=0))
    acks = [ack(1, "e1", 1), ack(2, "e1", 2), ack(3, "e2", 1)]
    assert tally.lost(acks) == [acks[2]]
    assert [missed for missed, _ in tally.covered(acks)] == [acks[1]]


def test_the_same_epoch_and_offset_twice_is_a_repeat() -> None:
    tally = Tally("doc:1", "poll")
    tally.deliver("e1", 1, 1, 1.0)
    tally.deliver("e1", 1, 1, 2.0)
    tally.deliver("e2", 1, 2, 3.0)  # another epoch: not a repeat
    assert tally.repeats == [2.0]


def test_the_busiest_second_counts_a_half_open_window() -> None:
    assert max_in_any_second([]) == 0
    assert max_in_any_second([0.0, 0.5, 0.999, 1.0, 1.5]) == 3
    assert max_in_any_second([0.0, 0.5, 0.9], width_s=0.5) == 2


@given(
    rate=st.integers(min_value=1, max_value=500),
    count=st.integers(min_value=1, max_value=300),
    lateness=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=300, max_size=300),
)
def test_a_schedule_at_the_rate_read_late_is_never_ahead_of_it(
    rate: int, count: int, lateness: list[float]
) -> None:
    # Slots k / rate after the start, each read up to 0.5 s late: reading late can
    # only put reconnects later, so the cumulative bound holds however they bunch.
    times = [10.0 + k / rate + lateness[k] for k in range(count)]
    assert excess_over_rate(times, 10.0, rate, burst=1) <= 0


def test_a_burst_beyond_the_rate_is_ahead_of_it() -> None:
    times = [10.0 + 0.001 * k for k in range(10)]  # 10 in 10 ms
    assert excess_over_rate(times, 10.0, 50, burst=1) > 0
    assert excess_over_rate([], 10.0, 50, burst=1) == 0
