"""Who may subscribe and publish (core/permission.py, docs/protocol.md §8)."""

from __future__ import annotations

import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.namespace import NamespaceOptions, Policy
from tidings.core.permission import (
    ANONYMOUS,
    Credentials,
    check_publish,
    check_subscribe,
    is_pattern_match,
)
from tidings.errors import PermissionDenied

PUBLIC = NamespaceOptions(policy=Policy.PUBLIC)
USER = NamespaceOptions(policy=Policy.USER)
TOKEN = NamespaceOptions(policy=Policy.TOKEN)
ALICE = Credentials(user="alice")

NAME_ALPHABET = string.ascii_letters + string.digits + "_-.@/="
tails = st.text(alphabet=NAME_ALPHABET + ":", min_size=1, max_size=30)


def test_anonymous_connection_has_no_user_and_no_token_channels() -> None:
    assert Credentials(user="", channels=None) == ANONYMOUS


@pytest.mark.parametrize("who", [ANONYMOUS, ALICE, Credentials(channels=())])
def test_public_namespace_lets_anyone_subscribe(who: Credentials) -> None:
    check_subscribe(ChannelName("news:1"), PUBLIC, who)


def test_user_namespace_lets_a_user_subscribe_to_their_own_channel() -> None:
    check_subscribe(ChannelName("user:alice"), USER, ALICE)


def test_user_namespace_refuses_another_users_channel_saying_which_is_allowed() -> None:
    with pytest.raises(PermissionDenied) as caught:
        check_subscribe(ChannelName("user:bob"), USER, ALICE)
    assert caught.value.message == (
        "channel user:bob is in a per-user namespace: only user:<your user id> may be subscribed"
    )
    assert caught.value.code == "permission_denied"


def test_user_namespace_refuses_an_anonymous_connection_saying_it_is_anonymous() -> None:
    with pytest.raises(PermissionDenied, match=r", and this connection is anonymous$"):
        check_subscribe(ChannelName("user:alice"), USER, ANONYMOUS)


@pytest.mark.parametrize("name", ["user:alice:x", "user:alicex", "alice", ":alice", "user:"])
def test_user_namespace_refuses_names_that_only_resemble_ones_own(name: str) -> None:
    with pytest.raises(PermissionDenied):
        check_subscribe(ChannelName(name), USER, ALICE)


def test_user_namespace_allows_another_users_channel_when_the_token_lists_it() -> None:
    check_subscribe(ChannelName("user:bob"), USER, Credentials("alice", ("user:bob",)))


def test_token_namespace_allows_a_channel_the_token_lists_by_name() -> None:
    check_subscribe(ChannelName("room:45"), TOKEN, Credentials(channels=("room:45",)))


@pytest.mark.parametrize("channels", [None, (), ("room:46",), ("room:4",), ("lobby:*",)])
def test_token_namespace_refuses_a_channel_the_token_does_not_list(
    channels: tuple[str, ...] | None,
) -> None:
    with pytest.raises(PermissionDenied) as caught:
        check_subscribe(ChannelName("room:45"), TOKEN, Credentials("alice", channels))
    assert caught.value.message == "channel room:45 may be subscribed only if the token lists it"


segments = st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=30)


@given(segments)
def test_token_pattern_room_star_allows_every_room_channel_of_one_segment(tail: str) -> None:
    who = Credentials(channels=("room:*",))
    channel = ChannelName(f"room:{tail}")
    assert who.lists(channel)
    check_subscribe(channel, TOKEN, who)


@given(st.text(alphabet=NAME_ALPHABET, min_size=1, max_size=10), tails)
def test_token_pattern_room_star_refuses_channels_of_other_namespaces(
    namespace: str, tail: str
) -> None:
    assume(namespace != "room")
    channel = ChannelName(f"{namespace}:{tail}")
    who = Credentials(channels=("room:*",))
    assert not who.lists(channel)
    with pytest.raises(PermissionDenied):
        check_subscribe(channel, TOKEN, who)


@given(segments, segments)
def test_token_pattern_star_does_not_cross_a_colon(first: str, second: str) -> None:
    who = Credentials(channels=("room:*",))
    assert not who.lists(ChannelName(f"room:{first}:{second}"))
    assert Credentials(channels=("room:*:*",)).lists(ChannelName(f"room:{first}:{second}"))
    assert Credentials(channels=("room:*:admin",)).lists(ChannelName(f"room:{first}:admin"))


@given(segments)
def test_token_pattern_star_inside_a_segment_matches_any_run_of_it(tail: str) -> None:
    assert is_pattern_match("doc:v*", f"doc:v{tail}")
    assert is_pattern_match("*:45", f"{tail}:45")
    assert not is_pattern_match("doc:v*", f"doc:w{tail}")


@pytest.mark.parametrize(
    ("pattern", "channel"),
    [("room:?", "room:1"), ("room:[ab]", "room:a"), ("room:[!b]", "room:a"), ("r?om:1", "room:1")],
)
def test_token_pattern_question_mark_and_brackets_are_literal(pattern: str, channel: str) -> None:
    assert not is_pattern_match(pattern, channel)
    assert is_pattern_match(pattern, pattern)


@given(st.text(alphabet=NAME_ALPHABET + ":?[]!", min_size=1, max_size=30))
def test_a_pattern_without_star_lists_only_itself(pattern: str) -> None:
    assert is_pattern_match(pattern, pattern)
    assert not is_pattern_match(pattern, pattern + "x")


@pytest.mark.parametrize("name", ["room", "roomy:1", "Room:1", "xroom:1"])
def test_token_pattern_room_star_matches_only_the_room_namespace_case_sensitively(
    name: str,
) -> None:
    assert not Credentials(channels=("room:*",)).lists(ChannelName(name))


def test_credentials_list_nothing_when_the_token_lists_no_channels() -> None:
    assert not Credentials(channels=None).lists(ChannelName("room:45"))
    assert not Credentials(channels=()).lists(ChannelName("room:45"))


@pytest.mark.parametrize("options", [PUBLIC, USER, TOKEN])
def test_publish_is_refused_when_client_publish_is_off_whatever_the_policy(
    options: NamespaceOptions,
) -> None:
    who = Credentials("alice", ("user:alice", "room:*"))
    for name in ("user:alice", "room:45"):
        with pytest.raises(PermissionDenied) as caught:
            check_publish(ChannelName(name), options, who)
        assert caught.value.message == (
            f"clients may not publish in channel {name}: its namespace has client_publish "
            "off; publish through the server API instead"
        )


def test_publish_is_allowed_in_a_public_namespace_with_client_publish_on() -> None:
    check_publish(ChannelName("chat:1"), NamespaceOptions(client_publish=True), ANONYMOUS)


def test_publish_in_a_user_namespace_is_allowed_only_to_ones_own_channel() -> None:
    options = NamespaceOptions(policy=Policy.USER, client_publish=True)
    check_publish(ChannelName("user:alice"), options, ALICE)
    with pytest.raises(PermissionDenied, match="per-user namespace"):
        check_publish(ChannelName("user:bob"), options, ALICE)


def test_publish_in_a_token_namespace_follows_the_token_channels() -> None:
    options = NamespaceOptions(policy=Policy.TOKEN, client_publish=True)
    who = Credentials(channels=("room:*",))
    check_publish(ChannelName("room:45"), options, who)
    with pytest.raises(PermissionDenied, match="only if the token lists it"):
        check_publish(ChannelName("lobby:1"), options, who)
