"""Owner routing (core/routing.py): a channel's routing key, and the placement of a ring."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.handover import ForwardTo, Hold, Sequence
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy
from tidings.core.placement import HERE, Moved
from tidings.core.ring import HashRing, ModuloHash
from tidings.core.routing import (
    Destinations,
    FollowingPlacement,
    RingPlacement,
    routing_key,
    user_key,
)

NAMESPACES = Namespaces({NamespaceName("inbox"): NamespaceOptions(policy=Policy.USER)})
URLS = {"a": "http://a.example:8000/", "b": "http://b.example:8000", "c": "https://c.example"}
channels = st.from_regex(r"[a-z]{1,5}:[A-Za-z0-9_\-.@/=]{1,20}", fullmatch=True).map(ChannelName)


def test_a_channel_of_a_user_namespace_routes_by_its_user() -> None:
    assert routing_key(ChannelName("user:123"), NAMESPACES) == "user:123"
    assert routing_key(ChannelName("inbox:123"), NAMESPACES) == "user:123"
    assert user_key("123") == "user:123"


def test_any_other_channel_routes_by_itself() -> None:
    assert routing_key(ChannelName("doc:9"), NAMESPACES) == "doc:9"
    assert routing_key(ChannelName("lobby"), NAMESPACES) == "lobby"


@settings(max_examples=100, deadline=None, derandomize=True)
@given(user=st.from_regex(r"[A-Za-z0-9_\-.@/=:]{1,30}", fullmatch=True))
def test_every_channel_of_one_user_has_one_owner(user: str) -> None:
    placement = RingPlacement(HashRing(URLS), "a", URLS, NAMESPACES)
    owners = {
        placement.channel_owner_url(ChannelName(f"{namespace}:{user}"))
        for namespace in ("user", "inbox")
    }
    assert owners == {placement.owner_url(user_key(user))}


@settings(max_examples=100, deadline=None, derandomize=True)
@given(channel=channels)
def test_exactly_one_node_of_the_ring_serves_a_channel_the_others_send_to_it(
    channel: ChannelName,
) -> None:
    ring = HashRing(URLS)
    places = {node: RingPlacement(ring, node, URLS, NAMESPACES).place(channel) for node in URLS}
    here = [node for node, place in places.items() if place == HERE]
    assert len(here) == 1
    owner_url = URLS[here[0]].rstrip("/")
    assert all(place in (HERE, Moved(owner_url)) for place in places.values())


def test_modulo_hashing_routes_the_same_way() -> None:
    placement = RingPlacement(ModuloHash(URLS), "b", URLS, NAMESPACES)
    owner = ModuloHash(URLS).owner("doc:9")
    expected = HERE if owner == "b" else Moved(URLS[owner].rstrip("/"))
    assert placement.place(ChannelName("doc:9")) == expected


def test_a_node_without_a_url_is_refused() -> None:
    with pytest.raises(ValueError, match=r"nodes \['c'\] have no URL"):
        RingPlacement(HashRing(["a", "c"]), "a", {"a": URLS["a"]}, NAMESPACES)


def test_a_following_placement_routes_by_the_latest_ring_it_was_given() -> None:
    placement = FollowingPlacement("a", "http://a.example:8000/", NAMESPACES)
    channel = next(
        ChannelName(f"doc:{n}") for n in range(100) if HashRing(URLS).owner(f"doc:{n}") == "b"
    )
    # No ring yet: served here, and /route names this node.
    assert placement.place(channel) == HERE
    assert placement.owner_url("doc:1") == "http://a.example:8000"
    placement.receive_ring(URLS)
    assert placement.place(channel) == Moved("http://b.example:8000")
    assert placement.channel_owner_url(channel) == "http://b.example:8000"
    placement.receive_ring({"a": URLS["a"]})  # b left
    assert placement.place(channel) == HERE
    placement.receive_ring({})
    assert placement.owner_url("doc:1") == "http://a.example:8000"


# FollowingPlacement in a transition (core.handover's roles)

BEFORE = {"a": URLS["a"], "b": URLS["b"]}
AFTER = dict(URLS)  # c joins


def following(node: str) -> FollowingPlacement:
    placement = FollowingPlacement(node, URLS[node], NAMESPACES)
    placement.receive_ring(AFTER, 2, BEFORE)
    return placement


def moving_to_c(giver: str) -> ChannelName:
    old, new = HashRing(BEFORE), HashRing(AFTER)
    return next(
        ChannelName(f"doc:{n}")
        for n in range(10_000)
        if old.owner(f"doc:{n}") == giver and new.owner(f"doc:{n}") == "c"
    )


@settings(max_examples=100, deadline=None, derandomize=True)
@given(channel=channels, sealed=st.sets(st.sampled_from(sorted(URLS))))
def test_in_a_transition_exactly_one_node_sequences_a_channel(
    channel: ChannelName, sealed: set[str]
) -> None:
    placements = {node: following(node) for node in URLS}
    for node in sealed:
        placements[node].seal()
    roles = {node: placement.publishing_role(channel) for node, placement in placements.items()}
    sequencing = [node for node, role in roles.items() if isinstance(role, Sequence | Hold)]
    assert sequencing == [HashRing(BEFORE).owner(routing_key(channel, NAMESPACES))]
    assert all(
        role == ForwardTo(sequencing[0]) for node, role in roles.items() if node != sequencing[0]
    )


def test_a_giver_copies_a_moving_channel_until_sealed_then_holds() -> None:
    channel = moving_to_c("a")
    a = following("a")
    assert a.publishing_role(channel) == Sequence(copy_to="c")
    a.seal()
    assert a.publishing_role(channel) == Hold()
    assert following("c").publishing_role(channel) == ForwardTo("a")


def test_a_receiver_serves_a_channel_once_it_holds_its_replica() -> None:
    channel = moving_to_c("b")
    c = following("c")
    assert c.place(channel) == Moved(URLS["b"])
    c.hold_replica(channel)
    assert c.place(channel) == HERE
    c.receive_ring(AFTER, 3)  # final: the new owner serves
    assert c.place(channel) == HERE
    assert c.publishing_role(channel) == Sequence()


def test_a_givers_clients_go_to_the_receiver_once_it_holds_the_channel() -> None:
    channel = moving_to_c("a")
    a = following("a")
    moves = Destinations(a)
    assert a.place(channel) == HERE  # the old owner serves until final
    assert moves.place(channel) == HERE
    a.receiver_holds(channel)
    assert moves.place(channel) == Moved(URLS["c"].rstrip("/"))
    assert a.place(channel) == HERE
    # A new version starts the hand-over again: nothing is known held.
    a.receive_ring(AFTER, 3, BEFORE)
    assert moves.place(channel) == HERE
