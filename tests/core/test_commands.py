"""Client commands (core/commands.py, docs/protocol.md §3): typed frames, or a BadRequest."""

from __future__ import annotations

import json
import string

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.commands import (
    OPS,
    Command,
    Connect,
    History,
    Ping,
    PositionFrame,
    Presence,
    Publish,
    Refresh,
    Subscribe,
    Unsubscribe,
    command_id,
    parse_command,
    publication_data,
    single_line_json,
)
from tidings.core.publication import Position
from tidings.errors import BadRequest, RequestError

CHANNEL_ALPHABET = string.ascii_letters + string.digits + "_-:.@/="

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


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"op":"connect","id":1}', Connect(id=1)),
        ('{"op":"connect","id":2,"token":"t.j.w"}', Connect(id=2, token="t.j.w")),
        ('{"op":"subscribe","id":3,"channel":"room:45"}', Subscribe(id=3, channel="room:45")),
        (
            '{"op":"subscribe","id":4,"channel":"room:45","since":{"epoch":"k3J9","offset":17}}',
            Subscribe(id=4, channel="room:45", since=PositionFrame("k3J9", 17)),
        ),
        ('{"op":"unsubscribe","id":5,"channel":"a"}', Unsubscribe(id=5, channel="a")),
        (
            '{"op":"publish","id":6,"channel":"a","data":{"x":1}}',
            Publish(id=6, channel="a", data=msgspec.Raw(b'{"x":1}')),
        ),
        (
            '{"op":"publish","id":7,"channel":"a","data":[],"key":"k-1"}',
            Publish(id=7, channel="a", data=msgspec.Raw(b"[]"), key="k-1"),
        ),
        ('{"op":"history","id":8,"channel":"a"}', History(id=8, channel="a")),
        (
            '{"op":"history","id":9,"channel":"a","since":{"epoch":"e","offset":0},"limit":1000}',
            History(id=9, channel="a", since=PositionFrame("e", 0), limit=1000),
        ),
        ('{"op":"presence","id":10,"channel":"a"}', Presence(id=10, channel="a")),
        ('{"op":"ping","id":11}', Ping(id=11)),
        ('{"id":12,"op":"ping"}', Ping(id=12)),
    ],
)
def test_parse_command_decodes_every_op_into_its_frame(frame: str, expected: Command) -> None:
    assert parse_command(frame) == expected
    assert parse_command(frame.encode()) == expected


def test_every_op_has_a_command_frame() -> None:
    assert set(OPS) == {
        "connect",
        "refresh",
        "subscribe",
        "unsubscribe",
        "publish",
        "history",
        "presence",
        "ping",
    }
    for op in OPS:
        fields = {"id": 1, "op": op, "channel": "a", "data": 1}
        if op in ("connect", "refresh", "ping"):
            del fields["channel"]
        if op == "refresh":
            fields["token"] = "t.j.w"
        if op != "publish":
            del fields["data"]
        assert parse_command(json.dumps(fields)).id == 1


@given(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.text(alphabet=CHANNEL_ALPHABET, min_size=1, max_size=50),
    json_values,
    # NUL marks clients' key space (core/dedupe.py): a key may not hold it.
    st.none() | st.text(min_size=1, max_size=255).filter(lambda key: "\x00" not in key),
)
def test_parse_command_keeps_publish_data_as_the_exact_json_text(
    command_id_: int, channel: str, value: object, key: str | None
) -> None:
    data = json.dumps(value, indent=1)
    fields: dict[str, object] = {"op": "publish", "id": command_id_, "channel": channel}
    frame = json.dumps(fields)[:-1] + ', "data": ' + data
    frame += "}" if key is None else ", " + json.dumps({"key": key})[1:]
    command = parse_command(frame)
    assert isinstance(command, Publish)
    assert command.id == command_id_
    assert command.channel_name == channel
    assert bytes(command.data) == data.encode()
    assert command.key == key


def test_subscribe_since_converts_to_a_position() -> None:
    command = parse_command(
        '{"op":"subscribe","id":1,"channel":"a","since":{"epoch":"k3J9","offset":17}}'
    )
    assert isinstance(command, Subscribe)
    assert command.since is not None
    assert command.since.to_position() == Position("k3J9", 17)


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ('{"epoch":"k3:J9","offset":1}', "epoch must be"),
        ('{"epoch":"k3J9","offset":-1}', "offset must be an integer >= 0"),
    ],
)
def test_position_frame_validates_epoch_and_offset_on_conversion(since: str, message: str) -> None:
    command = parse_command('{"op":"history","id":1,"channel":"a","since":' + since + "}")
    assert isinstance(command, History)
    assert command.since is not None
    with pytest.raises(BadRequest, match=message):
        command.since.to_position()


def test_channel_name_is_validated_when_read() -> None:
    command = parse_command('{"op":"subscribe","id":1,"channel":"room 45"}')
    assert isinstance(command, Subscribe)
    with pytest.raises(BadRequest, match="channel contains ' '"):
        _ = command.channel_name


@pytest.mark.parametrize(
    "frame",
    ["nope", "", "{", '{"op":"ping","id":1', '{"op":"ping","id":1,}', '{"op":"ping","id":1}{}'],
)
def test_parse_command_refuses_a_frame_that_is_not_json(frame: str) -> None:
    with pytest.raises(BadRequest, match=r"^frame is not JSON: "):
        parse_command(frame)


@pytest.mark.parametrize("op", ['"nope"', '"PING"', "5", "null"])
def test_parse_command_refuses_an_unknown_op_listing_the_known_ones(op: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_command('{"op":' + op + ',"id":1}')
    assert "`$.op`" in caught.value.message
    assert caught.value.message.endswith(
        "; op must be one of connect, refresh, subscribe, unsubscribe, publish, history, "
        "presence, ping"
    )


@pytest.mark.parametrize(
    ("frame", "named"),
    [
        ('{"op":"ping","id":"1"}', "Expected `int`, got `str` - at `$.id`"),
        ('{"op":"ping","id":true}', "Expected `int`, got `bool` - at `$.id`"),
        ('{"op":"ping","id":1.5}', "Expected `int`, got `float` - at `$.id`"),
        ('{"op":"subscribe","id":1,"channel":45}', "Expected `str`, got `int` - at `$.channel`"),
        ('{"op":"connect","id":1,"token":1}', "- at `$.token`"),
        ('{"op":"refresh","id":1}', "missing required field `token`"),
        ('{"op":"publish","id":1,"channel":"a","data":1,"key":"a\\u0000"}', "- at `$.key`"),
        (
            '{"op":"subscribe","id":1,"channel":"a","since":"k3J9:1"}',
            "got `str` - at `$.since`",
        ),
        (
            '{"op":"subscribe","id":1,"channel":"a","since":{"epoch":"e","offset":"1"}}',
            "Expected `int`, got `str` - at `$.since.offset`",
        ),
        ('{"op":"history","id":1,"channel":"a","limit":1001}', "<= 1000 - at `$.limit`"),
        ('{"op":"history","id":1,"channel":"a","limit":-1}', ">= 0 - at `$.limit`"),
        ('{"op":"publish","id":1,"channel":"a","data":1,"key":""}', "at `$.key`"),
        ('{"op":"publish","id":1,"channel":"a","data":1,"key":"' + "k" * 256 + '"}', "`$.key`"),
        ('{"op":"ping","id":1,"extra":2}', "unknown field `extra`"),
        ("[1]", "Expected `object`, got `array`"),
    ],
)
def test_parse_command_refuses_wrong_types_naming_the_field(frame: str, named: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_command(frame)
    assert caught.value.message.startswith("invalid command: ")
    assert named in caught.value.message


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ('{"op":"ping"}', "id"),
        ('{"id":1}', "op"),
        ('{"op":"subscribe","id":1}', "channel"),
        ('{"op":"unsubscribe","id":1}', "channel"),
        ('{"op":"presence","id":1}', "channel"),
        ('{"op":"history","id":1}', "channel"),
        ('{"op":"publish","id":1,"channel":"a"}', "data"),
        ('{"op":"subscribe","id":1,"channel":"a","since":{"epoch":"e"}}', "offset"),
        ('{"op":"subscribe","id":1,"channel":"a","since":{"offset":1}}', "epoch"),
    ],
)
def test_parse_command_refuses_missing_fields_naming_the_field(frame: str, field: str) -> None:
    with pytest.raises(BadRequest) as caught:
        parse_command(frame)
    assert f"Object missing required field `{field}`" in caught.value.message


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"op":"nope","id":41}', 41),
        ('{"op":"subscribe","id":42}', 42),
        ('{"op":"subscribe","id":43,"channel":5}', 43),
        ('{"id":44}', 44),
        ('{"op":"ping","id":45,"extra":true}', 45),
        ('{"op":"ping","id":"46"}', None),
        ('{"op":"ping","id":null}', None),
        ('{"op":"ping"}', None),
        ("[46]", None),
        ("not json", None),
        ('{"op":"ping","id":47', None),
    ],
)
def test_command_id_recovers_the_id_of_a_bad_frame_when_it_can(
    frame: str, expected: int | None
) -> None:
    assert command_id(frame) == expected
    assert command_id(frame.encode()) == expected


def test_parse_command_refuses_deeply_nested_data_as_bad_request() -> None:
    frame = '{"op":"publish","id":1,"channel":"a","data":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(BadRequest):
        parse_command(frame)


def test_command_id_of_a_deeply_nested_frame_is_none() -> None:
    assert command_id('{"id":1,"x":' + "[" * 5000 + "]" * 5000 + "}") is None


@given(json_values)
def test_single_line_json_returns_single_line_data_unchanged(value: object) -> None:
    data = json.dumps(value).encode()
    assert single_line_json(data) is data


@given(json_values, st.sampled_from(["\n", "\r\n", "\r"]))
def test_single_line_json_removes_raw_line_breaks_and_keeps_the_value(
    value: object, newline: str
) -> None:
    data = json.dumps([value], indent=1).replace("\n", newline).encode()
    assert newline.encode() in data
    single = single_line_json(data)
    assert b"\n" not in single
    assert b"\r" not in single
    assert json.loads(single) == [value]


def test_single_line_json_keeps_escaped_line_breaks_inside_strings() -> None:
    single = single_line_json(b'{"text":\n"a\\nb\\r"}')
    assert b"\n" not in single
    assert b"\r" not in single
    assert b'"a\\nb\\r"' in single  # the string's escapes are untouched
    assert json.loads(single) == {"text": "a\nb\r"}


def test_single_line_json_keeps_numbers_it_cannot_represent_verbatim() -> None:
    # Nothing is re-parsed: a number out of a float's range stays as the publisher wrote it.
    assert single_line_json(b"[\n1e400]") == b"[ 1e400]"


# -- fuzzing the decode path (issue #11) ------------------------------------------------
# Whatever a client sends, decoding it the way the WebSocket transport does gives a
# typed command, a RequestError to reply with, or no id (a close with 4008): never any
# other exception. Bounded: a few hundred examples per strategy.

FUZZ = settings(max_examples=300, deadline=None)
FIELDS = ("id", "op", "channel", "since", "data", "key", "limit", "token")

leaf_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from([*OPS, "", "room:45", "a" * 300, "\x00", "\ud7ff", "E1:5"])
)
fuzz_values = st.recursive(
    leaf_values,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["epoch", "offset", *FIELDS]) | st.text(max_size=6),
            children,
            max_size=4,
        )
    ),
    max_leaves=10,
)
command_like = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6), fuzz_values, max_size=6
).map(lambda frame: json.dumps(frame, allow_nan=True))


def decode_as_the_transport_does(frame: str | bytes) -> object:
    """Decode ``frame`` as ``WebSocketSession._handle_frame`` and the commands it runs
    do, up to (not including) hub calls; return the outcome."""
    try:
        command = parse_command(frame)
    except BadRequest:
        return command_id(frame)  # an int: an error reply; None: a close with 4008
    try:
        if not isinstance(command, Connect | Ping | Refresh):
            command.channel_name  # noqa: B018 (validation happens on reading it)
        if isinstance(command, Subscribe | History) and command.since is not None:
            command.since.to_position()
        if isinstance(command, Publish):
            publication_data(bytes(command.data), 65_536)
    except RequestError as error:
        return error
    return command


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_decode_to_a_command_an_error_or_a_close(frame: bytes) -> None:
    outcome = decode_as_the_transport_does(frame)
    assert outcome is None or isinstance(outcome, int | RequestError | Command)


@FUZZ
@given(st.text(max_size=600))
def test_any_text_decodes_to_a_command_an_error_or_a_close(frame: str) -> None:
    outcome = decode_as_the_transport_does(frame)
    assert outcome is None or isinstance(outcome, int | RequestError | Command)


@FUZZ
@given(command_like)
def test_any_command_shaped_json_decodes_to_a_command_an_error_or_a_close(frame: str) -> None:
    outcome = decode_as_the_transport_does(frame)
    assert outcome is None or isinstance(outcome, int | RequestError | Command)


@FUZZ
@given(command_like, st.data())
def test_a_damaged_command_decodes_to_a_command_an_error_or_a_close(
    frame: str, data: st.DataObject
) -> None:
    raw = bytearray(frame.encode())
    for _ in range(data.draw(st.integers(1, 4))):
        if not raw:
            break
        at = data.draw(st.integers(0, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    outcome = decode_as_the_transport_does(bytes(raw[:cut]))
    assert outcome is None or isinstance(outcome, int | RequestError | Command)
