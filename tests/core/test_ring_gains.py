"""The channels a new ring gives to this node that the previous gave another
(core/ring_gains.py): exactly those, for any two rings."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.handover import Transition
from tidings.core.ring import HashRing
from tidings.core.ring_gains import gained_channels

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
