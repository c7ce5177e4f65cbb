"""The ring's transitions and the hand-over decisions (core/handover.py)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.handover import (
    ForwardTo,
    Hold,
    ReplicaStep,
    RingRecord,
    Sequence,
    Transition,
    TransitionUnderWay,
    decide_replica,
    finalizable,
    handed_over,
    publishing_role,
    serving_node,
)
from tidings.core.publication import Position
from tidings.core.ring import HashRing

SMALL = settings(max_examples=60, deadline=None, derandomize=True)
node_ids = st.sampled_from(["a", "b", "c", "d", "e"])
node_sets = st.sets(node_ids, min_size=1, max_size=5)
keys = st.text(alphabet="abcdefghij:0123456789", min_size=1, max_size=12)


def record_of(nodes: set[str], version: int = 1) -> RingRecord:
    return RingRecord(version, {node: f"http://{node}" for node in nodes})


def transition_of(record: RingRecord) -> Transition:
    previous = None if record.previous is None else HashRing(record.previous, vnodes=16)
    return Transition(HashRing(record.nodes, vnodes=16), previous)


def test_a_join_moves_from_the_nodes_before_to_the_nodes_after() -> None:
    record = record_of({"a", "b"}, version=4).joined("c", "http://c")
    assert record.version == 5
    assert set(record.nodes) == {"a", "b", "c"}
    assert record.previous is not None
    assert set(record.previous) == {"a", "b"}
    assert record.in_transition


def test_a_planned_leave_keeps_the_leaver_among_the_nodes_it_hands_over_from() -> None:
    record = record_of({"a", "b", "c"}).left("c")
    assert set(record.nodes) == {"a", "b"}
    assert record.previous is not None
    assert "c" in record.previous


def test_the_first_node_and_the_last_to_leave_have_nothing_to_hand_over() -> None:
    first = RingRecord().joined("a", "http://a")
    assert (first.version, first.in_transition) == (1, False)
    last = first.left("a")
    assert (last.version, dict(last.nodes), last.in_transition) == (2, {}, False)


def test_a_planned_change_waits_for_the_transition_under_way() -> None:
    record = record_of({"a", "b"}).joined("c", "http://c")
    with pytest.raises(TransitionUnderWay, match="wait until it is final"):
        record.joined("d", "http://d")
    with pytest.raises(TransitionUnderWay):
        record.left("a")


def test_changes_that_change_nothing_keep_the_version() -> None:
    record = record_of({"a", "b"})
    assert record.joined("a", "http://a") is record
    assert record.left("z") is record
    assert record.crashed("z") is record
    assert record.finalized() is record


def test_a_crash_during_a_transition_leaves_both_sides_at_once() -> None:
    record = record_of({"a", "b"}).joined("c", "http://c").crashed("a")
    assert set(record.nodes) == {"b", "c"}
    assert record.previous is not None
    assert set(record.previous) == {"b"}
    # The joiner dying leaves nothing to move: the ring is settled again.
    settled = record_of({"a", "b"}).joined("c", "http://c").crashed("c")
    assert set(settled.nodes) == {"a", "b"}
    assert not settled.in_transition


def test_finalized_clears_the_transition_and_counts_a_version() -> None:
    record = record_of({"a"}).joined("b", "http://b")
    final = record.finalized()
    assert (final.version, final.nodes, final.in_transition) == (
        record.version + 1,
        record.nodes,
        False,
    )


def test_a_transition_is_final_once_every_live_giver_has_handed() -> None:
    record = record_of({"a", "b"}).joined("c", "http://c")
    assert not finalizable(record, {"a", "b", "c"}, {"a"})
    assert finalizable(record, {"a", "b", "c"}, {"a", "b"})
    # A giver no longer a member (its lease expired) is not waited for.
    assert finalizable(record, {"a", "c"}, {"a"})
    assert not finalizable(record.finalized(), {"a", "b", "c"}, {"a", "b"})


@SMALL
@given(node_sets, node_sets, st.lists(keys, min_size=1, max_size=30), st.data())
def test_at_most_one_node_sequences_a_key_whatever_has_sealed(
    before: set[str], after: set[str], some_keys: list[str], data: st.DataObject
) -> None:
    transition = Transition(HashRing(after, vnodes=16), HashRing(before, vnodes=16))
    everyone = before | after
    sealed = data.draw(st.sets(st.sampled_from(sorted(everyone))))
    for key in some_keys:
        roles = {
            node: publishing_role(transition, node, key, sealed=node in sealed) for node in everyone
        }
        sequencers = [node for node, role in roles.items() if isinstance(role, Sequence)]
        holders = [node for node, role in roles.items() if isinstance(role, Hold)]
        assert len(sequencers) + len(holders) == 1  # the old owner, and only it
        old = transition.old_owner(key)
        assert (sequencers or holders) == [old]
        for node, role in roles.items():
            if node != old:
                assert role == ForwardTo(old)
        if old not in sealed:
            expected_copy = transition.new_owner(key) if transition.moves(key) else None
            assert roles[old] == Sequence(copy_to=expected_copy)


@SMALL
@given(node_sets, keys)
def test_a_settled_ring_has_its_owner_sequence_and_serve(nodes: set[str], key: str) -> None:
    transition = Transition(HashRing(nodes, vnodes=16))
    owner = transition.new_owner(key)
    assert not transition.moves(key)
    for node in nodes:
        role = publishing_role(transition, node, key, sealed=False)
        assert role == (Sequence() if node == owner else ForwardTo(owner))
        assert serving_node(transition, node, key, holds_replica=False) == owner


def test_the_new_owner_serves_a_moving_key_only_once_it_holds_its_replica() -> None:
    transition = transition_of(record_of({"a", "b"}).joined("c", "http://c"))
    key = next(f"doc:{n}" for n in range(10_000) if transition.moves(f"doc:{n}"))
    old, new = transition.old_owner(key), transition.new_owner(key)
    assert serving_node(transition, new, key, holds_replica=False) == old
    assert serving_node(transition, new, key, holds_replica=True) == new
    assert serving_node(transition, old, key, holds_replica=False) == old
    other = ({"a", "b", "c"} - {old, new}).pop()
    assert serving_node(transition, other, key, holds_replica=True) == old


E = "e1"


@pytest.mark.parametrize(
    ("held", "first", "top", "snapshot", "step"),
    [
        (None, Position(E, 5), 9, True, ReplicaStep.APPLY),
        (Position("old", 40), Position(E, 5), 9, True, ReplicaStep.APPLY),
        (Position(E, 7), Position(E, 5), 9, True, ReplicaStep.APPLY),
        (Position(E, 9), Position(E, 5), 9, True, ReplicaStep.IGNORE),
        (Position(E, 12), Position(E, 5), 9, True, ReplicaStep.IGNORE),
        (None, Position(E, 1), 2, False, ReplicaStep.APPLY),
        (None, Position(E, 3), 3, False, ReplicaStep.RESYNC),
        (Position(E, 9), Position(E, 10), 11, False, ReplicaStep.APPLY),
        (Position(E, 9), Position(E, 8), 11, False, ReplicaStep.APPLY),
        (Position(E, 9), Position(E, 8), 9, False, ReplicaStep.IGNORE),
        (Position(E, 9), Position(E, 11), 11, False, ReplicaStep.RESYNC),
        (Position(E, 9), Position("other", 1), 1, False, ReplicaStep.RESYNC),
    ],
)
def test_a_replica_takes_what_follows_and_asks_again_for_what_does_not(
    held: Position | None, first: Position, top: int, snapshot: bool, step: ReplicaStep
) -> None:
    assert decide_replica(held, first, top, snapshot=snapshot) is step


@SMALL
@given(st.integers(1, 40), st.integers(0, 10), st.randoms(use_true_random=False))
def test_a_replica_fed_reordered_and_repeated_messages_ends_at_the_givers_top(
    length: int, retained: int, rng: random.Random
) -> None:
    # The giver's log is offsets 1..top; it sends a snapshot (its last ``retained``
    # publications, or none), then each later publication alone. The network repeats
    # and reorders them; a resync is answered with a fresh snapshot. The replica must
    # end at the giver's top, never storing an offset twice.
    top = length + 10

    def snapshot() -> tuple[int, int, bool]:
        return (max(1, length - retained + 1), length, True)

    messages = [snapshot()] + [(offset, offset, False) for offset in range(length + 1, top + 1)]
    inbox = messages + [rng.choice(messages) for _ in range(5)]
    rng.shuffle(inbox)
    held: Position | None = None
    stored: list[int] = []
    while inbox:
        first, last, is_snapshot = inbox.pop(0)
        step = decide_replica(held, Position(E, first), last, snapshot=is_snapshot)
        if step is ReplicaStep.APPLY:
            after = 0 if held is None else held.offset
            stored += range(max(first, after + 1), last + 1)
            held = Position(E, last)
        elif step is ReplicaStep.RESYNC:
            inbox.append((max(1, top - retained + 1), top, True))
    assert held == Position(E, top)
    assert stored == sorted(set(stored))


def test_a_giver_has_handed_over_once_each_receiver_holds_its_top() -> None:
    tops = {"doc:1": Position(E, 4), "doc:2": Position(E, 9)}
    assert not handed_over(tops, {"doc:1": Position(E, 4), "doc:2": Position(E, 8)})
    assert handed_over(tops, {"doc:1": Position(E, 4), "doc:2": Position(E, 9)})
    assert handed_over({}, {})
