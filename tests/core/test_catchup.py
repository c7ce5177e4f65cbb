"""The live catch-up rule (core/catchup.py): deliver the next one, drop what was had,
and never let a hole or another epoch pass as continuous."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.catchup_cases import CATCHUP_CASES, CatchUpCase
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.publication import Position

epochs = st.sampled_from(["e1", "e2", "e3"])
offsets = st.integers(min_value=0, max_value=50)
positions = st.builds(Position, epochs, offsets)


@pytest.mark.parametrize("case", CATCHUP_CASES, ids=lambda case: case.why)
def test_the_shared_cases(case: CatchUpCase) -> None:
    """The table the clients' copies are checked against (tests/support/catchup_cases.py)."""
    assert decide_catch_up(case.held, case.publication, case.left) is case.outcome


def test_the_shared_cases_cover_every_outcome() -> None:
    assert {case.outcome for case in CATCHUP_CASES} == set(CatchUp)


@given(positions, positions, st.frozensets(epochs))
def test_deliver_is_exactly_the_next_offset_of_the_held_epoch(
    held: Position, position: Position, left: frozenset[str]
) -> None:
    outcome = decide_catch_up(held, position, left - {held.epoch})
    is_next = position.epoch == held.epoch and position.offset == held.offset + 1
    assert (outcome is CatchUp.DELIVER) == is_next


@given(positions, positions, st.frozensets(epochs))
def test_within_the_held_epoch_the_offsets_alone_decide(
    held: Position, position: Position, left: frozenset[str]
) -> None:
    """Listing the held epoch as left (a client lists every epoch it held) changes nothing."""
    outcome = decide_catch_up(held, position, left | {held.epoch})
    if position.epoch != held.epoch:
        assert outcome is (CatchUp.ALREADY_HAD if position.epoch in left else CatchUp.GAP)
    elif position.offset <= held.offset:
        assert outcome is CatchUp.ALREADY_HAD
    elif position.offset > held.offset + 1:
        assert outcome is CatchUp.HOLE
    else:
        assert outcome is CatchUp.DELIVER


@given(positions)
def test_nothing_held_delivers_anything(position: Position) -> None:
    assert decide_catch_up(None, position) is CatchUp.DELIVER


@given(positions, st.lists(positions, max_size=40))
def test_following_the_rule_never_repeats_nor_skips_silently(
    start: Position, arrivals: list[Position]
) -> None:
    """A holder that delivers on DELIVER, drops ALREADY_HAD, and on HOLE or GAP moves
    just before the publication *saying so* (as the hub and the clients do): what it
    delivers is each (epoch, offset) once, and every step is +1 or a declared jump."""
    held = start
    left: set[str] = set()
    delivered: set[Position] = set()
    for position in arrivals:
        outcome = decide_catch_up(held, position, left)
        if outcome is CatchUp.ALREADY_HAD:
            continue
        if outcome is not CatchUp.DELIVER:
            jump = Position(position.epoch, position.offset - 1)
            assert jump != held, "a hole or a gap is a real jump"
            if position.epoch != held.epoch:
                left.add(held.epoch)
        assert position not in delivered
        delivered.add(position)
        held = position
