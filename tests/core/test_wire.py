"""Wire encodings of publications (core/wire.py): valid JSON, data verbatim, encoded once."""

from __future__ import annotations

import json
import string

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.wire import (
    EncodedPublication,
    encode_json,
    position_fields,
    publication_frame,
    publication_frames,
)

CHANNEL_ALPHABET = string.ascii_letters + string.digits + "_-:.@/="
EPOCH_ALPHABET = string.ascii_letters + string.digits + "_-"

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

publications = st.builds(
    Publication,
    channel=st.text(alphabet=CHANNEL_ALPHABET, min_size=1, max_size=40).map(ChannelName),
    epoch=st.text(alphabet=EPOCH_ALPHABET, min_size=1, max_size=32),
    offset=st.integers(min_value=1, max_value=2**63),
    data=json_values.map(lambda value: json.dumps(value).encode()),
    ts=st.integers(min_value=0, max_value=2**53),
    key=st.none() | st.text(min_size=1, max_size=40),
    info=st.none() | st.builds(ClientInfo, st.text(max_size=20), st.text(max_size=20)),
)

ROOM = ChannelName("room:45")


def expected_fields(publication: Publication) -> dict[str, object]:
    fields: dict[str, object] = {
        "channel": publication.channel,
        "epoch": publication.epoch,
        "offset": publication.offset,
        "data": json.loads(publication.data),
        "ts": publication.ts,
    }
    if publication.key is not None:
        fields["key"] = publication.key
    if publication.info is not None:
        fields["info"] = {"client": publication.info.client, "user": publication.info.user}
    return fields


def test_websocket_form_is_the_pub_push_of_the_protocol() -> None:
    publication = Publication(ROOM, "k3J9", 17, b'{"text":"hi"}', 1_763_790_000_123)
    encoded = EncodedPublication(publication)
    assert json.loads(encoded.websocket) == {
        "push": "pub",
        "channel": "room:45",
        "epoch": "k3J9",
        "offset": 17,
        "data": {"text": "hi"},
        "ts": 1_763_790_000_123,
    }


def test_json_form_is_the_publication_of_the_protocol() -> None:
    publication = Publication(ROOM, "k3J9", 17, b'{"text":"hi"}', 1_763_790_000_123)
    assert json.loads(EncodedPublication(publication).json) == {
        "channel": "room:45",
        "epoch": "k3J9",
        "offset": 17,
        "data": {"text": "hi"},
        "ts": 1_763_790_000_123,
    }


def test_both_forms_carry_key_and_info_when_present() -> None:
    publication = Publication(ROOM, "e", 1, b"1", 5, key="k-1", info=ClientInfo("c9", "alice"))
    encoded = EncodedPublication(publication)
    extra = {"key": "k-1", "info": {"client": "c9", "user": "alice"}}
    assert json.loads(encoded.json) == {
        "channel": "room:45",
        "epoch": "e",
        "offset": 1,
        "data": 1,
        "ts": 5,
        **extra,
    }
    assert json.loads(encoded.websocket) == {**json.loads(encoded.json), "push": "pub"}


def test_both_forms_leave_out_key_and_info_when_absent_rather_than_null() -> None:
    encoded = EncodedPublication(Publication(ROOM, "e", 1, b"null", 5))
    assert b'"key"' not in encoded.json
    assert b'"info"' not in encoded.json
    assert '"key"' not in encoded.websocket
    assert '"info"' not in encoded.websocket


def test_data_is_embedded_verbatim_not_re_serialised() -> None:
    data = b'{ "b" : [1,  2.50] ,"a":"\\u00e9"}'
    encoded = EncodedPublication(Publication(ROOM, "e", 1, data, 5))
    assert data in encoded.json
    assert data.decode() in encoded.websocket
    assert json.loads(encoded.json)["data"] == {"b": [1, 2.5], "a": "é"}


def test_each_form_is_computed_once_and_then_shared() -> None:
    encoded = EncodedPublication(Publication(ROOM, "e", 1, b"[]", 5))
    websocket = encoded.websocket
    json_form = encoded.json
    assert isinstance(websocket, str)
    assert isinstance(json_form, bytes)
    assert encoded.websocket is websocket
    assert encoded.json is json_form


@given(publications)
def test_websocket_and_json_forms_are_valid_json_equal_to_the_expected_fields(
    publication: Publication,
) -> None:
    encoded = EncodedPublication(publication)
    expected = expected_fields(publication)
    assert json.loads(encoded.json) == expected
    assert json.loads(encoded.websocket) == {"push": "pub", **expected}
    assert publication.data in encoded.json
    assert b"\n" not in encoded.json


@given(publications)
def test_publication_frame_encodes_to_the_json_form(publication: Publication) -> None:
    assert encode_json(publication_frame(publication)) == EncodedPublication(publication).json


def test_publication_frames_keep_the_order_given() -> None:
    published = [Publication(ROOM, "e", offset, b"0", offset) for offset in (3, 1, 2)]
    frames = publication_frames(published)
    assert [frame.offset for frame in frames] == [3, 1, 2]
    assert json.loads(encode_json(frames)) == [expected_fields(p) for p in published]


def test_position_fields_are_epoch_and_offset() -> None:
    assert position_fields(Position("k3J9", 17)) == {"epoch": "k3J9", "offset": 17}
