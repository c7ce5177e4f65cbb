"""How a Kafka record becomes a publication (tidings.sources.kafka_mapping): the channel
template, the data selection and the reasons a record is skipped. Pure."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.channel import ChannelName
from tidings.errors import ConfigError
from tidings.sources.kafka_mapping import (
    ChannelTemplate,
    DataSelection,
    KafkaRecord,
    Mapped,
    RecordMapping,
    Skip,
)

CHANNEL_TEXT = st.text(
    alphabet="ABCXYZabcxyz0189_-:.@/=", min_size=1, max_size=40
)  # characters a channel allows
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


def _record(
    value: bytes | None = b"{}",
    *,
    key: bytes | None = None,
    headers: tuple[tuple[str, bytes], ...] = (),
) -> KafkaRecord:
    return KafkaRecord("orders", 2, 41, key, value, headers)


def _mapping(channel: str, data: str = "value") -> RecordMapping:
    return RecordMapping(ChannelTemplate.parse(channel), DataSelection.parse(data))


# -- templates ---------------------------------------------------------------------------------


def test_template_fills_each_placeholder_from_its_part_of_the_record() -> None:
    record = _record(
        b'{"room": {"id": 7}, "kind": "msg"}',
        key=b"u1",
        headers=(("tenant", b"acme"), ("tenant", b"beta")),
    )
    mapping = _mapping("{header.tenant}:{value.kind}/{value.room.id}/{key}@{topic}.{partition}")
    mapped = mapping.map(record)
    channel = ChannelName("beta:msg/7/u1@orders.2")
    assert mapped == Mapped(channel, b'{"room": {"id": 7}, "kind": "msg"}')


@given(CHANNEL_TEXT)
def test_template_of_the_key_gives_the_key(key: str) -> None:
    mapped = _mapping("user:{key}").map(_record(key=key.encode()))
    assert mapped == Mapped(ChannelName(f"user:{key}"), b"{}")


@given(CHANNEL_TEXT, st.integers(-(10**18), 10**18))
def test_template_takes_a_string_or_integer_field(room: str, number: int) -> None:
    value = json.dumps({"room": room, "n": number}).encode()
    mapped = _mapping("room:{value.room}.{value.n}").map(_record(value))
    assert isinstance(mapped, Mapped)
    assert mapped.channel == f"room:{room}.{number}"


@given(st.text(max_size=30))
def test_parsing_any_text_gives_a_template_or_a_config_error(text: str) -> None:
    outcome = _parse(text)
    if isinstance(outcome, ConfigError):
        assert str(outcome).startswith("channel: ")
    else:
        assert outcome.text == text


def _parse(text: str) -> ChannelTemplate | ConfigError:
    try:
        return ChannelTemplate.parse(text)
    except ConfigError as error:
        return error


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "empty"),
        ("room:{value}", "not a placeholder"),
        ("room:{vaule.id}", "not a placeholder"),
        ("room:{value..id}", "names no field"),
        ("room:{header.}", "not a placeholder"),
        ("room:{key", "unmatched brace"),
        ("room:key}", "unmatched brace"),
        ("room {key}", "contains ' '"),
    ],
)
def test_template_mistakes_are_found_when_parsed(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        ChannelTemplate.parse(text, where="sources.orders.channel")


@pytest.mark.parametrize(
    ("template", "record", "detail"),
    [
        ("user:{key}", _record(), "has no key"),
        ("user:{key}", _record(key=b"\xff"), "key is not UTF-8"),
        ("{header.to}", _record(), "no header 'to'"),
        ("room:{value.room}", _record(b'{"rom": 1}'), "no field value.room"),
        ("room:{value.room.id}", _record(b'{"room": 1}'), "no field value.room.id"),
        ("room:{value.room}", _record(b'{"room": true}'), "is a boolean"),
        ("room:{value.room}", _record(b'{"room": 1.5}'), "number with a fraction"),
        ("room:{value.room}", _record(b'{"room": null}'), "is null"),
        ("room:{value.room}", _record(b"[1]"), "no field value.room"),
        ("room:{value.room}", _record(b'{"room": "a b"}'), "contains ' '"),
        ("room:{key}", _record(key=b"x" * 300), "at most 255"),
    ],
)
def test_record_without_a_channel_is_skipped_saying_why(
    template: str, record: KafkaRecord, detail: str
) -> None:
    skip = _mapping(template).map(record)
    assert isinstance(skip, Skip)
    assert skip.reason == "no_channel"
    assert detail in skip.detail


# -- data ----------------------------------------------------------------------------------------


@given(JSON_VALUES)
def test_data_of_the_whole_value_is_the_value_on_one_line(value: object) -> None:
    raw = json.dumps(value, indent=2).encode()
    mapped = _mapping("all").map(_record(raw))
    assert isinstance(mapped, Mapped)
    assert b"\n" not in mapped.data
    assert json.loads(mapped.data) == value


@given(JSON_VALUES)
def test_data_of_a_field_is_that_field(field: object) -> None:
    raw = json.dumps({"payload": {"body": field}}).encode()
    mapped = _mapping("all", "value.payload.body").map(_record(raw))
    assert isinstance(mapped, Mapped)
    assert json.loads(mapped.data) == field


def test_record_without_the_data_field_is_skipped() -> None:
    skip = _mapping("all", "value.body").map(_record(b'{"text": "hi"}'))
    assert skip == Skip("no_data", "the value has no field value.body")


@pytest.mark.parametrize("value", [b"not json", b'{"a": ', b"\xff\xfe", b""])
def test_record_whose_value_is_not_json_is_skipped(value: bytes) -> None:
    skip = _mapping("all").map(_record(value))
    assert isinstance(skip, Skip)
    assert skip.reason == "not_json"


def test_tombstone_is_skipped_as_not_json() -> None:
    assert _mapping("all").map(_record(None)) == Skip(
        "not_json", "the record has no value (a tombstone)"
    )


@given(st.binary(max_size=50), st.none() | st.binary(max_size=10))
def test_mapping_any_bytes_gives_a_value_never_an_exception(
    value: bytes, key: bytes | None
) -> None:
    result = _mapping("room:{value.room}.{key}", "value.body").map(_record(value, key=key))
    assert isinstance(result, Mapped | Skip)


@pytest.mark.parametrize("text", ["value.", "valu", "key", "value.a..b", ""])
def test_data_selection_mistakes_are_found_when_parsed(text: str) -> None:
    with pytest.raises(ConfigError, match="data"):
        DataSelection.parse(text)


@pytest.mark.parametrize("text", ["value", "value.body", "value.a.b"])
def test_data_selection_reads_back_as_written(text: str) -> None:
    assert DataSelection.parse(text).text == text
