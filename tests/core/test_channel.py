"""Channel names and namespaces (core/channel.py, docs/protocol.md §1)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import (
    DEFAULT_NAMESPACE,
    MAX_CHANNEL_LENGTH,
    ChannelName,
    name_after_namespace,
    namespace_of,
    parse_channel,
)
from tidings.errors import BadRequest

CHANNEL_ALPHABET = string.ascii_letters + string.digits + "_-:.@/="

valid_names = st.text(alphabet=CHANNEL_ALPHABET, min_size=1, max_size=MAX_CHANNEL_LENGTH)
disallowed_chars = st.characters().filter(lambda ch: ch not in CHANNEL_ALPHABET)


@given(valid_names)
def test_parse_channel_accepts_every_name_of_allowed_characters(name: str) -> None:
    assert parse_channel(name) == name


@pytest.mark.parametrize(
    "name",
    ["room:45", "user:123", "a", "A-Z_a.z@host/path=1", "x" * MAX_CHANNEL_LENGTH, ":", "::"],
)
def test_parse_channel_accepts_examples_from_the_protocol(name: str) -> None:
    assert parse_channel(name) == name


def test_parse_channel_rejects_an_empty_name_saying_it_is_empty() -> None:
    with pytest.raises(BadRequest, match="channel must not be empty"):
        parse_channel("")


@given(st.text(alphabet=CHANNEL_ALPHABET, min_size=MAX_CHANNEL_LENGTH + 1, max_size=600))
def test_parse_channel_rejects_names_over_255_characters_naming_the_length(name: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_channel(name)
    assert caught.value.message == (
        f"channel is {len(name)} characters long; at most 255 are allowed"
    )
    assert caught.value.code == "bad_request"


@given(
    st.text(alphabet=CHANNEL_ALPHABET, max_size=120),
    disallowed_chars,
    st.text(alphabet=CHANNEL_ALPHABET, max_size=120),
)
def test_parse_channel_rejects_a_disallowed_character_naming_it(
    before: str, bad: str, after: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_channel(before + bad + after)
    assert caught.value.message == (
        f"channel contains {bad!r}; allowed are A-Z a-z 0-9 and _ - : . @ / ="
    )


@pytest.mark.parametrize("name", ["room\n", "room 45", "room:*", "é", "room#1", "\x00"])
def test_parse_channel_rejects_common_mistakes(name: str) -> None:
    with pytest.raises(BadRequest, match="channel contains"):
        parse_channel(name)


@pytest.mark.parametrize(
    ("value", "type_name"), [(45, "int"), (None, "NoneType"), (["a"], "list"), (b"a", "bytes")]
)
def test_parse_channel_rejects_a_non_string_naming_its_type(value: object, type_name: str) -> None:
    with pytest.raises(BadRequest, match=rf"channel must be a string, got {type_name}$"):
        parse_channel(value)


@pytest.mark.parametrize(
    ("name", "namespace", "rest"),
    [
        ("room:45", "room", "45"),
        ("user:123", "user", "123"),
        ("a:b:c", "a", "b:c"),
        ("plain", "", "plain"),
        (":x", "", "x"),
        ("room:", "room", ""),
    ],
)
def test_namespace_is_the_part_before_the_first_colon(name: str, namespace: str, rest: str) -> None:
    channel = ChannelName(name)
    assert namespace_of(channel) == namespace
    assert name_after_namespace(channel) == rest


@given(st.text(alphabet=CHANNEL_ALPHABET.replace(":", ""), min_size=1, max_size=50))
def test_a_name_without_colon_is_in_the_default_namespace(name: str) -> None:
    channel = ChannelName(name)
    assert namespace_of(channel) == DEFAULT_NAMESPACE
    assert name_after_namespace(channel) == name


@given(
    st.text(alphabet=CHANNEL_ALPHABET.replace(":", ""), max_size=50),
    st.text(alphabet=CHANNEL_ALPHABET, max_size=50),
)
def test_namespace_and_rest_rebuild_a_name_with_a_colon(head: str, tail: str) -> None:
    channel = ChannelName(f"{head}:{tail}")
    assert namespace_of(channel) == head
    assert name_after_namespace(channel) == tail
