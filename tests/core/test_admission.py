"""The admission rules (core/admission.py) and placement (core/placement.py): which
channels a connection may hold, and where a channel owned elsewhere sends its client."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.placement import OWNER_URL, ElsewherePlacement
from tidings.core.admission import check_channels, check_placement, check_subscription
from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy
from tidings.core.permission import ANONYMOUS, Credentials
from tidings.core.placement import (
    LOCAL_PLACEMENT,
    owner_location,
    owner_websocket_url,
)
from tidings.errors import BadRequest, ChannelMoved, PermissionDenied, TooManyRequests

PUBLIC = NamespaceOptions()
OWNER = OWNER_URL


def test_a_subscription_within_the_rules_is_admitted() -> None:
    check_subscription(ChannelName("room:1"), ANONYMOUS, PUBLIC, held={ChannelName("a")}, limit=2)


def test_a_subscription_the_namespace_forbids_is_refused_before_anything_else() -> None:
    user_only = NamespaceOptions(policy=Policy.USER)
    channel = ChannelName("user:bob")
    with pytest.raises(PermissionDenied, match="per-user namespace"):
        check_subscription(channel, Credentials(user="alice"), user_only, held={channel}, limit=0)


def test_a_channel_already_held_is_a_bad_request() -> None:
    channel = ChannelName("room:1")
    with pytest.raises(BadRequest, match="already subscribed to room:1"):
        check_subscription(channel, ANONYMOUS, PUBLIC, held={channel}, limit=5)


def test_a_subscription_past_the_channel_limit_is_too_many() -> None:
    held = {ChannelName(f"room:{n}") for n in range(3)}
    with pytest.raises(TooManyRequests, match="at most 3 subscriptions"):
        check_subscription(ChannelName("room:9"), ANONYMOUS, PUBLIC, held=held, limit=3)


def test_channels_of_a_request_are_each_checked() -> None:
    namespaces = Namespaces({NamespaceName("user"): NamespaceOptions(policy=Policy.USER)})
    alice = Credentials(user="alice")
    check_channels([ChannelName("room:1"), ChannelName("user:alice")], alice, namespaces)
    with pytest.raises(PermissionDenied):
        check_channels([ChannelName("room:1"), ChannelName("user:bob")], alice, namespaces)


def test_the_local_placement_serves_every_channel_here() -> None:
    check_placement([ChannelName("room:1"), ChannelName("doc:9")], LOCAL_PLACEMENT)


def test_a_channel_owned_elsewhere_is_moved_with_its_owners_url() -> None:
    placement = ElsewherePlacement("doc:9")
    with pytest.raises(ChannelMoved) as raised:
        check_placement([ChannelName("room:1"), ChannelName("doc:9")], placement)
    assert (raised.value.code, raised.value.channel, raised.value.owner_url) == (
        "moved",
        "doc:9",
        OWNER,
    )


def test_the_owners_location_is_the_same_request_on_the_owner() -> None:
    assert owner_location(OWNER + "/", "/sse?channel=doc:9") == OWNER + "/sse?channel=doc:9"


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("https://b.example:8443", "wss://b.example:8443/ws"),
        ("http://10.0.0.2:8000/", "ws://10.0.0.2:8000/ws"),
        ("HTTP://b.example", "ws://b.example/ws"),
        ("wss://b.example", "wss://b.example/ws"),
    ],
)
def test_the_owners_websocket_url_is_its_ws_path_on_a_ws_scheme(base: str, url: str) -> None:
    assert owner_websocket_url(base) == url


@given(st.from_regex(r"[a-z0-9.-]{1,20}(:[0-9]{1,5})?", fullmatch=True), st.booleans())
def test_the_owners_websocket_url_keeps_its_host_and_security(host: str, tls: bool) -> None:
    url = owner_websocket_url(f"{'https' if tls else 'http'}://{host}")
    assert url == f"{'wss' if tls else 'ws'}://{host}/ws"
