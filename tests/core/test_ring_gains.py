"""The channels a new ring gives to this node that the previous gave another, and what
it does with each (core/ring_gains.py): exactly those, for any two rings."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.handover import ForwardTo, Transition, publishing_role
from tidings.core.ring import HashRing
from tidings.core.ring_gains import TakeoverStep, decide_takeover, gained_channels

CHANNELS = [ChannelName(f"doc:{n}") for n in range(300)]
node_sets = st.sets(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=1)


def placement(nodes: set[str]) -> Transition:
    return Transition(HashRing(sorted(nodes), vnodes=16))


def gained_by_a(
    before: Transition | None, after: Transition | None
) -> Callable[[ChannelName], bool]:
    return gained_channels(before, after, "a", lambda channel: channel)


@given(node_sets, node_sets)
def test_gained_are_the_channels_another_node_owned_before_and_this_one_owns_now(
    before_nodes: set[str], after_nodes: set[str]
) -> None:
    before, after = placement(before_nodes | {"a"}), placement(after_nodes | {"a"})
    gained = gained_by_a(before, after)
    before_ring = HashRing(sorted(before_nodes | {"a"}), vnodes=16)
    after_ring = HashRing(sorted(after_nodes | {"a"}), vnodes=16)
    for channel in CHANNELS:
        expected = after_ring.owner(channel) == "a" and before_ring.owner(channel) != "a"
        assert gained(channel) is expected


def test_a_node_that_loses_a_peer_gains_exactly_the_peers_channels_it_is_next_for() -> None:
    gained = gained_by_a(placement({"a", "b", "c"}), placement({"a", "b"}))
    after = HashRing(["a", "b"], vnodes=16)
    before = HashRing(["a", "b", "c"], vnodes=16)
    expected = {ch for ch in CHANNELS if before.owner(ch) == "c" and after.owner(ch) == "a"}
    assert expected  # some of c's channels come to a
    assert {ch for ch in CHANNELS if gained(ch)} == expected


def test_nothing_is_gained_from_no_ring_or_into_no_ring() -> None:
    ring = placement({"a", "b"})
    assert not any(gained_by_a(None, ring)(ch) for ch in CHANNELS)
    assert not any(gained_by_a(ring, None)(ch) for ch in CHANNELS)


def test_in_a_transition_the_old_owner_keeps_sequencing_so_nothing_is_gained_yet() -> None:
    settled = placement({"b"})
    joining = Transition(HashRing(["a", "b"], vnodes=16), HashRing(["b"], vnodes=16))
    assert not any(gained_by_a(settled, joining)(ch) for ch in CHANNELS)
    final = placement({"a", "b"})
    assert any(gained_by_a(joining, final)(ch) for ch in CHANNELS)


# -- the rule both kinds of node follow: decide_takeover ------------------------------------

SMALL = settings(max_examples=80, deadline=None, derandomize=True)
transitions = st.builds(
    lambda nodes, previous: Transition(
        HashRing(sorted(nodes), vnodes=16),
        None if previous is None else HashRing(sorted(previous), vnodes=16),
    ),
    node_sets,
    st.none() | node_sets,
)
maybe_transitions = st.none() | transitions
keys = st.text(alphabet="abcdefghij:0123456789", min_size=1, max_size=12)
node_ids = st.sampled_from(["a", "b", "c", "d", "e"])


def sequences(transition: Transition, node: str, key: str) -> bool:
    """Whether ``node`` assigns ``key``'s offsets, by the publishing role (sealed or not)."""
    return not isinstance(publishing_role(transition, node, key, sealed=False), ForwardTo)


@SMALL
@given(
    before=maybe_transitions,
    after=transitions,
    node=node_ids,
    key=keys,
    handed_whole=st.booleans(),
    empty_ring_gains=st.booleans(),
)
def test_a_node_takes_a_key_over_exactly_when_its_publishing_role_stops_forwarding_it(
    *,
    before: Transition | None,
    after: Transition,
    node: str,
    key: str,
    handed_whole: bool,
    empty_ring_gains: bool,
) -> None:
    step = decide_takeover(
        before, after, node, key, handed_whole=handed_whole, empty_ring_gains=empty_ring_gains
    )
    gains = before is not None and sequences(after, node, key) and not sequences(before, node, key)
    if not gains:
        assert step is TakeoverStep.KEEP
    else:
        assert step is (TakeoverStep.CONTINUE if handed_whole else TakeoverStep.RENEW)


@SMALL
@given(transitions, node_ids, keys, st.booleans())
def test_a_key_this_node_sequenced_before_is_kept_whatever_the_ring_after(
    before: Transition, node: str, key: str, handed_whole: bool
) -> None:
    if not sequences(before, node, key):
        return
    for after in (before, None):
        for empty_ring_gains in (False, True):
            step = decide_takeover(
                before,
                after,
                node,
                key,
                handed_whole=handed_whole,
                empty_ring_gains=empty_ring_gains,
            )
            assert step is TakeoverStep.KEEP


@SMALL
@given(transitions, node_ids, keys, st.booleans())
def test_an_emptied_ring_gains_another_nodes_keys_only_when_asked_to(
    before: Transition, node: str, key: str, handed_whole: bool
) -> None:
    def step(empty_ring_gains: bool) -> TakeoverStep:
        return decide_takeover(
            before,
            None,
            node,
            key,
            handed_whole=handed_whole,
            empty_ring_gains=empty_ring_gains,
        )

    assert step(False) is TakeoverStep.KEEP
    if not sequences(before, node, key):
        assert step(True) is (TakeoverStep.CONTINUE if handed_whole else TakeoverStep.RENEW)


def test_a_key_handed_over_whole_continues_its_epoch_and_one_handed_in_part_is_renewed() -> None:
    joining = Transition(HashRing(["a", "b"], vnodes=16), HashRing(["b"], vnodes=16))
    final = placement({"a", "b"})
    moved = [ch for ch in CHANNELS if final.old_owner(ch) == "a"]
    assert moved  # a takes some of b's keys
    for channel in moved:
        whole = decide_takeover(
            joining, final, "a", channel, handed_whole=True, empty_ring_gains=True
        )
        part = decide_takeover(
            joining, final, "a", channel, handed_whole=False, empty_ring_gains=True
        )
        assert (whole, part) == (TakeoverStep.CONTINUE, TakeoverStep.RENEW)


def test_a_crash_during_a_transition_renews_the_dead_givers_keys_at_their_next_owner() -> None:
    # b joins a ring of a and c; c crashes before handing over: a sequences some of c's
    # keys at once, which no one handed it.
    joining = Transition(HashRing(["a", "b", "c"], vnodes=16), HashRing(["a", "c"], vnodes=16))
    crashed = Transition(HashRing(["a", "b"], vnodes=16), HashRing(["a"], vnodes=16))
    taken = [ch for ch in CHANNELS if joining.old_owner(ch) == "c" and crashed.old_owner(ch) == "a"]
    assert taken
    for channel in taken:
        step = decide_takeover(
            joining, crashed, "a", channel, handed_whole=False, empty_ring_gains=True
        )
        assert step is TakeoverStep.RENEW
