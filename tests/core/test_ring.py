"""The hash ring and modulo hashing (core/ring.py): who owns a key, and what a change of
nodes moves.

The movement bounds are statistical, made so they cannot flake: the keys are a fixed
list and every hash is stable, and hypothesis runs derandomized (the same node sets on
every run). They are still meaningful: a node's share on a ring of 160 points per node
varies by about 8 % of itself (1/sqrt(160)), and the bounds allow 50 %, about six such
deviations; a ring that moved keys like modulo hashing (N/(N+1)) would miss them by far.
"""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.ring import (
    DEFAULT_VNODES,
    HashRing,
    ModuloHash,
    moved_keys,
    ownership_of,
    point_of,
)

KEYS = [f"user:{n}" for n in range(5000)] + [f"doc:{n}" for n in range(5000)]
node_ids = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12)
node_sets = st.lists(node_ids, min_size=1, max_size=8, unique=True)
# Building rings of 160 points per node over 10,000 keys is slow-ish: few examples, the
# same on every run.
MOVEMENT = settings(max_examples=15, deadline=None, derandomize=True)
SMALL = settings(max_examples=50, deadline=None, derandomize=True)


def test_a_point_is_the_keys_blake2b_digest_read_as_a_64_bit_number() -> None:
    # Not Python's hash(), which is salted per process: nodes must agree on points.
    expected = int.from_bytes(hashlib.blake2b(b"doc:9", digest_size=8).digest(), "big")
    assert point_of("doc:9") == expected
    assert all(0 <= point_of(key) < 2**64 for key in KEYS[:100])


@SMALL
@given(nodes=node_sets, order=st.randoms(use_true_random=False))
def test_ownership_does_not_depend_on_the_order_nodes_are_given(
    nodes: list[str], order: random.Random
) -> None:
    shuffled = list(nodes)
    order.shuffle(shuffled)
    ring, again = HashRing(nodes), HashRing(shuffled)
    modulo, modulo_again = ModuloHash(nodes), ModuloHash(shuffled)
    for key in KEYS[::50]:
        assert ring.owner(key) == again.owner(key)
        assert modulo.owner(key) == modulo_again.owner(key)
        assert ring.owner(key) in nodes


@SMALL
@given(nodes=node_sets, extra=node_ids)
def test_a_ring_grown_node_by_node_is_the_ring_built_at_once(nodes: list[str], extra: str) -> None:
    grown = HashRing(nodes[:1])
    for node in nodes[1:]:
        grown = grown.with_node(node)
    grown = grown.with_node(extra).without_node(extra) if extra not in nodes else grown
    built = HashRing(nodes)
    assert grown.nodes == built.nodes
    assert all(grown.owner(key) == built.owner(key) for key in KEYS[::50])


@MOVEMENT
@given(nodes=st.lists(node_ids, min_size=2, max_size=8, unique=True), which=st.integers(0, 7))
def test_removing_a_node_moves_only_its_own_keys(nodes: list[str], which: int) -> None:
    removed = nodes[which % len(nodes)]
    before = HashRing(nodes)
    after = before.without_node(removed)
    moved = moved_keys(before, after, KEYS)
    assert moved == {key for key in KEYS if before.owner(key) == removed}


@MOVEMENT
@given(nodes=st.lists(node_ids, min_size=1, max_size=8, unique=True), new=node_ids)
def test_adding_a_node_to_a_ring_moves_about_one_in_n_plus_one_keys_all_to_it(
    nodes: list[str], new: str
) -> None:
    if new in nodes:
        return
    before = HashRing(nodes)
    after = before.with_node(new)
    moved = moved_keys(before, after, KEYS)
    assert all(after.owner(key) == new for key in moved)  # only to the newcomer
    expected = 1 / (len(nodes) + 1)
    assert 0.5 * expected <= len(moved) / len(KEYS) <= 1.5 * expected


@MOVEMENT
@given(nodes=st.lists(node_ids, min_size=2, max_size=8, unique=True), new=node_ids)
def test_adding_a_node_with_modulo_hashing_moves_about_n_in_n_plus_one_keys(
    nodes: list[str], new: str
) -> None:
    if new in nodes:
        return
    moved = moved_keys(ModuloHash(nodes), ModuloHash([*nodes, new]), KEYS)
    n = len(nodes)
    # At least N/(N+1) minus sampling slack: a key stays only where both its remainder
    # and the node at that index stay the same.
    assert len(moved) / len(KEYS) >= n / (n + 1) - 0.05


def test_the_ring_moves_far_fewer_keys_than_modulo_when_a_node_joins() -> None:
    nodes = [f"node-{n}" for n in range(4)]
    ring = len(moved_keys(HashRing(nodes), HashRing([*nodes, "node-4"]), KEYS))
    modulo = len(moved_keys(ModuloHash(nodes), ModuloHash([*nodes, "node-4"]), KEYS))
    assert ring < len(KEYS) / 3 < modulo


def test_shares_of_a_ring_are_even_within_its_vnode_spread() -> None:
    nodes = [f"node-{n}" for n in range(5)]
    ring = HashRing(nodes)
    counts = {node: 0 for node in nodes}
    for key in KEYS:
        counts[ring.owner(key)] += 1
    fair = len(KEYS) / len(nodes)
    assert all(0.5 * fair <= count <= 1.5 * fair for count in counts.values())


def test_one_node_owns_every_key() -> None:
    assert {HashRing(["a"]).owner(key) for key in KEYS[:100]} == {"a"}
    assert {ModuloHash(["a"]).owner(key) for key in KEYS[:100]} == {"a"}


def test_repeated_nodes_count_once() -> None:
    assert HashRing(["b", "a", "b"]).nodes == ("a", "b")
    assert ModuloHash(["b", "a", "b"]).nodes == ("a", "b")


def test_an_ownership_without_nodes_or_points_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one node"):
        HashRing([])
    with pytest.raises(ValueError, match="at least one node"):
        ModuloHash([])
    with pytest.raises(ValueError, match="vnodes must be at least 1"):
        HashRing(["a"], vnodes=0)
    with pytest.raises(ValueError, match="at least one node"):
        HashRing(["a"]).without_node("a")


def test_the_kind_is_chosen_by_name() -> None:
    assert isinstance(ownership_of("ring", ["a"]), HashRing)
    assert isinstance(ownership_of("modulo", ["a"]), ModuloHash)
    ring = ownership_of("ring", ["a", "b"], vnodes=7)
    assert isinstance(ring, HashRing)
    assert ring.vnodes == 7
    assert HashRing(["a"]).vnodes == DEFAULT_VNODES
    with pytest.raises(ValueError, match="ring"):
        ownership_of("consistent", ["a"])  # type: ignore[arg-type]  # the check under test
