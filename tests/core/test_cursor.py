"""Cursors (core/cursor.py): round trips, and corruption is refused, never misread."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import string

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tidings.core.channel import MAX_CHANNEL_LENGTH, ChannelName
from tidings.core.cursor import MAX_CURSOR_LENGTH, decode_cursor, encode_cursor
from tidings.core.publication import Position
from tidings.errors import BadRequest

CHANNEL_ALPHABET = string.ascii_letters + string.digits + "_-:.@/="
EPOCH_ALPHABET = string.ascii_letters + string.digits + "_-"
TOKEN_ALPHABET = string.ascii_letters + string.digits + "_-"
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_\-]+")

channels = st.text(alphabet=CHANNEL_ALPHABET, min_size=1, max_size=40).map(ChannelName)
positions = st.builds(
    Position,
    st.text(alphabet=EPOCH_ALPHABET, min_size=1, max_size=32),
    st.integers(min_value=0, max_value=2**63),
)
position_maps = st.dictionaries(channels, positions, max_size=8)


def forge(body: bytes) -> str:
    """Build a token with a valid checksum around ``body``, following the documented layout."""
    checksum = hashlib.blake2b(body, digest_size=8).digest()
    return base64.urlsafe_b64encode(body + checksum).rstrip(b"=").decode("ascii")


def forge_entries(entries: object) -> str:
    return forge(b"\x01" + json.dumps(entries).encode())


@given(position_maps)
def test_cursor_round_trips_any_valid_positions(original: dict[ChannelName, Position]) -> None:
    token = encode_cursor(original)
    assert TOKEN_PATTERN.fullmatch(token) is not None
    assert decode_cursor(token) == original


def test_cursor_of_no_channels_round_trips_to_an_empty_map() -> None:
    assert decode_cursor(encode_cursor({})) == {}


def test_cursor_keeps_each_channel_paired_with_its_own_position() -> None:
    original = {
        ChannelName("room:45"): Position("k3J9", 17),
        ChannelName("user:123"): Position("zz", 0),
    }
    decoded = decode_cursor(encode_cursor(original))
    assert decoded[ChannelName("room:45")] == Position("k3J9", 17)
    assert decoded[ChannelName("user:123")] == Position("zz", 0)


@given(position_maps, st.data())
def test_cursor_with_any_changed_character_is_refused(
    original: dict[ChannelName, Position], data: st.DataObject
) -> None:
    token = encode_cursor(original)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="index")
    replacement = data.draw(
        st.sampled_from(TOKEN_ALPHABET).filter(lambda ch: ch != token[index]), label="char"
    )
    with pytest.raises(BadRequest) as refused:
        decode_cursor(token[:index] + replacement + token[index + 1 :])
    assert refused.value.message == (
        "cursor is corrupted; pass back a cursor exactly as the server gave it"
    )


@given(position_maps, st.data())
def test_cursor_with_a_changed_character_before_the_last_is_refused(
    original: dict[ChannelName, Position], data: st.DataObject
) -> None:
    token = encode_cursor(original)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 2), label="index")
    replacement = data.draw(
        st.sampled_from(TOKEN_ALPHABET).filter(lambda ch: ch != token[index]), label="char"
    )
    with pytest.raises(BadRequest):
        decode_cursor(token[:index] + replacement + token[index + 1 :])


def test_cursor_with_a_changed_last_character_is_refused() -> None:
    token = encode_cursor({ChannelName("a"): Position("e", 1)})
    assert len(token) % 4 != 0  # the last character carries padding bits
    for replacement in TOKEN_ALPHABET.replace(token[-1], ""):
        with pytest.raises(BadRequest):
            decode_cursor(token[:-1] + replacement)


@given(position_maps, st.data())
def test_cursor_with_a_character_outside_the_alphabet_is_refused(
    original: dict[ChannelName, Position], data: st.DataObject
) -> None:
    token = encode_cursor(original)
    index = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="index")
    bad = data.draw(st.characters().filter(lambda ch: ch not in TOKEN_ALPHABET), label="char")
    with pytest.raises(BadRequest, match="cursor must be 1-4096 characters of A-Z a-z 0-9 _ -"):
        decode_cursor(token[:index] + bad + token[index + 1 :])


@given(position_maps, st.data())
def test_truncated_cursor_is_refused(
    original: dict[ChannelName, Position], data: st.DataObject
) -> None:
    token = encode_cursor(original)
    length = data.draw(st.integers(min_value=0, max_value=len(token) - 1), label="length")
    with pytest.raises(BadRequest):
        decode_cursor(token[:length])


@given(position_maps, st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=8))
def test_cursor_with_characters_appended_is_refused(
    original: dict[ChannelName, Position], extra: str
) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor(original) + extra)


@given(st.text(max_size=200))
def test_garbage_text_is_refused_as_a_cursor(garbage: str) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(garbage)


@given(st.text(alphabet=TOKEN_ALPHABET, min_size=1, max_size=200))
def test_garbage_of_url_safe_characters_is_refused_as_a_cursor(garbage: str) -> None:
    with pytest.raises(BadRequest):
        decode_cursor(garbage)


def _positions_with_token_length(target: int) -> dict[ChannelName, Position]:
    """Find positions whose cursor is exactly ``target`` characters long."""
    full = [ChannelName(f"c{i}:" + "x" * (MAX_CHANNEL_LENGTH - 4)) for i in range(11)]
    for length in range(1, MAX_CHANNEL_LENGTH + 1):
        candidate = {channel: Position("e", 1) for channel in full}
        candidate[ChannelName("z" * length)] = Position("e", 1)
        try:
            if len(encode_cursor(candidate)) == target:
                return candidate
        except BadRequest:
            break
    raise AssertionError(f"no cursor of exactly {target} characters found")


def test_cursor_of_exactly_4096_characters_is_made_and_read_back() -> None:
    original = _positions_with_token_length(MAX_CURSOR_LENGTH)
    token = encode_cursor(original)
    assert len(token) == MAX_CURSOR_LENGTH
    assert decode_cursor(token) == original


def test_cursor_over_4096_characters_is_refused_at_encode_naming_the_limit() -> None:
    original = _positions_with_token_length(MAX_CURSOR_LENGTH)
    original[ChannelName("one-more")] = Position("e", 1)
    with pytest.raises(BadRequest) as caught:
        encode_cursor(original)
    assert "at most 4,096 are allowed: subscribe fewer channels" in caught.value.message
    assert f"the positions of {len(original)} channels" in caught.value.message


@given(position_maps, st.integers(min_value=1, max_value=1000))
def test_token_over_4096_characters_is_refused_at_decode(
    original: dict[ChannelName, Position], excess: int
) -> None:
    token = encode_cursor(original)
    token += "A" * (MAX_CURSOR_LENGTH - len(token) + excess)
    with pytest.raises(BadRequest, match="cursor must be 1-4096 characters"):
        decode_cursor(token)


def test_cursor_with_a_valid_checksum_round_trips_through_the_documented_layout() -> None:
    token = forge_entries([["room:45", "k3J9", 17]])
    assert decode_cursor(token) == {ChannelName("room:45"): Position("k3J9", 17)}


@pytest.mark.parametrize(
    "body",
    [
        b"\x02[]",  # unknown version
        b"",  # nothing but a checksum
        b"\x01not json",
        b'\x01{"room:45": ["k3J9", 17]}',  # not a list
        b'\x01[["room:45", "k3J9"]]',  # entry of two
        b'\x01["room:45"]',  # entry not a list
        b"\x01\xff\xfe",  # not UTF-8
    ],
)
def test_cursor_with_a_valid_checksum_but_bad_body_is_refused(body: bytes) -> None:
    with pytest.raises(BadRequest, match="cursor is corrupted"):
        decode_cursor(forge(body))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (["room 45", "k3J9", 17], "channel contains ' '"),
        (["room:45", "k3:J9", 17], "epoch must be"),
        (["room:45", "k3J9", -1], "offset must be an integer >= 0"),
        (["room:45", "k3J9", 1.5], "offset must be an integer >= 0"),
        (["room:45", "k3J9", True], "offset must be an integer >= 0"),
    ],
)
def test_cursor_entries_are_validated_like_any_peer_input(
    entry: list[object], message: str
) -> None:
    with pytest.raises(BadRequest, match=message):
        decode_cursor(forge_entries([entry]))


def test_cursor_forged_with_deeply_nested_json_is_refused_as_bad_request() -> None:
    token = forge(b"\x01" + b"[" * 3000)
    assert len(token) <= MAX_CURSOR_LENGTH
    with pytest.raises(BadRequest):
        decode_cursor(token)


@given(position_maps)
def test_different_positions_make_different_cursors(
    original: dict[ChannelName, Position],
) -> None:
    assume(original)
    channel = next(iter(original))
    moved = dict(original)
    moved[channel] = Position(original[channel].epoch, original[channel].offset + 1)
    assert encode_cursor(moved) != encode_cursor(original)
