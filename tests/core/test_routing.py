"""Owner routing (core/routing.py): a channel's routing key, and the placement of a ring."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy
from tidings.core.placement import HERE, Moved
from tidings.core.ring import HashRing, ModuloHash
from tidings.core.routing import FollowingPlacement, RingPlacement, routing_key, user_key

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
