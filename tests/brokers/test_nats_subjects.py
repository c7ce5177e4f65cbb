"""How the NATS broker names channels on NATS (``brokers.nats_subjects``): pure, so its
properties are stated with hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.brokers.nats_subjects import (
    channel_of_live_subject,
    history_subject,
    is_valid_prefix,
    live_subject,
    name_of,
    token_of,
)
from tidings.core.channel import ChannelName

# What a token may hold: valid in a NATS subject token and in a JetStream KV key.
TOKEN: re.Pattern[str] = re.compile(r"[A-Za-z0-9_=-]+")


@given(st.text(min_size=1))
def test_a_token_is_valid_in_subjects_and_kv_keys_and_gives_its_name_back(name: str) -> None:
    token = token_of(name)

    assert TOKEN.fullmatch(token)
    assert name_of(token) == name


@given(st.text(min_size=1), st.text(min_size=1))
def test_two_names_never_share_a_token(first: str, second: str) -> None:
    if first != second:
        assert token_of(first) != token_of(second)


def test_plain_characters_stay_readable_and_the_rest_is_escaped() -> None:
    assert token_of("room:a.b*>c d") == "room=3Aa=2Eb=2A=3Ec=20d"
    assert token_of("doc_9-x") == "doc_9-x"
    assert token_of("=") == "=3D"
    assert token_of("é") == "=C3=A9"


@pytest.mark.parametrize("token", ["a.b", "=3", "=3a", "a*", "ü", "=ZZ", "=C3"])
def test_a_string_no_name_gives_is_refused_as_a_token(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        name_of(token)


@given(st.text(min_size=1))
def test_a_live_subject_gives_its_channel_back(name: str) -> None:
    channel = ChannelName(name)

    assert channel_of_live_subject("app", live_subject("app", channel)) == channel
    assert channel_of_live_subject("other", live_subject("app", channel)) is None
    assert history_subject("app", channel).count(".") == 2


@pytest.mark.parametrize(
    ("prefix", "valid"),
    [("tidings", True), ("app-1_x", True), ("", False), ("a.b", False), ("a b", False)],
)
def test_a_prefix_is_one_token_of_plain_characters(prefix: str, valid: bool) -> None:
    assert is_valid_prefix(prefix) is valid
