"""Positions and publications (core/publication.py)."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.publication import (
    ClientInfo,
    Position,
    Publication,
    parse_position,
    parse_position_text,
)
from tidings.errors import BadRequest

EPOCH_ALPHABET = string.ascii_letters + string.digits + "_-"

epochs = st.text(alphabet=EPOCH_ALPHABET, min_size=1, max_size=32)
offsets = st.integers(min_value=0, max_value=2**63)


@given(epochs, offsets)
def test_parse_position_accepts_every_valid_epoch_and_offset(epoch: str, offset: int) -> None:
    assert parse_position(epoch, offset) == Position(epoch, offset)


@pytest.mark.parametrize("epoch", ["", "x" * 33, "k3:J9", "k3 J9", "é", 7, None])
def test_parse_position_rejects_an_invalid_epoch(epoch: object) -> None:
    with pytest.raises(BadRequest, match="epoch must be 1-32 characters of A-Z a-z 0-9 _ -"):
        parse_position(epoch, 1)


@pytest.mark.parametrize("offset", [-1, 1.0, "1", True, False, None])
def test_parse_position_rejects_an_offset_that_is_not_a_non_negative_integer(
    offset: object,
) -> None:
    with pytest.raises(BadRequest, match="offset must be an integer >= 0"):
        parse_position("k3J9", offset)


@given(epochs, offsets)
def test_position_text_round_trips_through_str(epoch: str, offset: int) -> None:
    position = Position(epoch, offset)
    assert str(position) == f"{epoch}:{offset}"
    assert parse_position_text(str(position)) == position


@pytest.mark.parametrize(
    "text", ["k3J9", "k3J9:", ":17", "k3J9:-1", "k3J9:1.5", "a:b:17", "k3J9:١٧"]
)
def test_parse_position_text_rejects_text_not_of_the_since_form(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_position_text(text)


def test_parse_position_text_names_the_expected_form_and_quotes_the_input() -> None:
    with pytest.raises(BadRequest) as caught:
        parse_position_text("garbage")
    assert caught.value.message == "since must be <epoch>:<offset>, got 'garbage'"


def test_publication_position_is_its_epoch_and_offset() -> None:
    publication = Publication(
        ChannelName("room:45"), "k3J9", 17, b"{}", 1_763_790_000_123, "key-1", ClientInfo("c", "u")
    )
    assert publication.position == Position("k3J9", 17)
