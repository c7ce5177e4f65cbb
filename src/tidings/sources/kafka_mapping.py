"""How a Kafka record becomes a publication: the channel template, the part of the value
that becomes the publication's data, and the reason a record is skipped. Pure: a record's
bytes in, ``Mapped(channel, data)`` or ``Skip(reason, detail)`` out.

A channel template is text with placeholders in braces, each naming a part of the record:

=================  ===================================================================
``{key}``          the record's key, as UTF-8 text
``{header.NAME}``  the value of the record's header ``NAME`` (the last one if repeated)
``{value.PATH}``   a field of the JSON value; ``PATH`` is object keys joined by dots
                   (``{value.room.id}``); the field must be a string or an integer
``{topic}``        the record's topic
``{partition}``    the record's partition number
=================  ===================================================================

Everything outside braces is kept as written and must be made of the characters a channel
name allows (docs/protocol.md §1), so a template's mistakes are found when it is parsed,
and a record's (a missing key, header or field, a part that makes no valid channel) when
it is mapped. The data is the whole JSON value (``data = "value"``, its exact bytes) or one
of its fields (``data = "value.PATH"``, encoded again as compact JSON).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from tidings.core.channel import ChannelName, parse_channel
from tidings.core.commands import single_line_json
from tidings.errors import BadRequest, ConfigError

# Why a record was skipped, the label of tidings_source_skipped_total: the mapping's
# reasons, or the publisher's (``SourceRowRefused.reason``: invalid_channel, too_large,
# invalid_data), passed on as it gives them.
SkipReason = str

# A placeholder is "{...}" with no brace inside; what it names is checked apart.
_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
_LITERAL: Final = re.compile(r"[A-Za-z0-9_\-:.@/=]*")
_FIELD: Final = re.compile(r"[^.{}\s]+")
_HEADER: Final = re.compile(r"[^{}\s]+")
_NAMES_HINT: Final = "{key}, {header.NAME}, {value.FIELD}, {topic} or {partition}"


@dataclass(frozen=True, slots=True)
class KafkaRecord:
    """The parts of a consumed record that the mapping reads."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()


@dataclass(frozen=True, slots=True)
class Mapped:
    """What to publish for a record."""

    channel: ChannelName
    data: bytes


@dataclass(frozen=True, slots=True)
class Skip:
    """A record that cannot be published, why (a metric label) and a line for the log."""

    reason: SkipReason
    detail: str


# -- the parts of a template ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Literal:
    text: str


@dataclass(frozen=True, slots=True)
class _Key:
    pass


@dataclass(frozen=True, slots=True)
class _Header:
    name: str


@dataclass(frozen=True, slots=True)
class _ValueField:
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Topic:
    pass


@dataclass(frozen=True, slots=True)
class _Partition:
    pass


_Part = _Literal | _Key | _Header | _ValueField | _Topic | _Partition


class _Missing(Exception):
    """A part of the record a template or the data selection names is not there."""


def _parse_path(where: str, text: str, dotted: str) -> tuple[str, ...]:
    """Split ``value.a.b`` after its ``value.`` into ``("a", "b")``."""
    fields = tuple(dotted.split("."))
    if not all(_FIELD.fullmatch(field) for field in fields):
        raise ConfigError(
            f"{where}: {text!r} names no field; write value.FIELD or value.FIELD.SUBFIELD"
        )
    return fields


def _parse_placeholder(where: str, text: str, inside: str) -> _Part:
    if inside == "key":
        return _Key()
    if inside == "topic":
        return _Topic()
    if inside == "partition":
        return _Partition()
    kind, dot, rest = inside.partition(".")
    if dot and kind == "header" and _HEADER.fullmatch(rest):
        return _Header(rest)
    if dot and kind == "value":
        return _ValueField(_parse_path(where, text, rest))
    raise ConfigError(f"{where}: {{{inside}}} in {text!r} is not a placeholder; use {_NAMES_HINT}")


def _parse_literal(where: str, text: str, literal: str) -> _Literal:
    if "{" in literal or "}" in literal:
        raise ConfigError(f"{where}: {text!r} has an unmatched brace")
    if _LITERAL.fullmatch(literal) is None:
        bad = next(ch for ch in literal if _LITERAL.fullmatch(ch) is None)
        raise ConfigError(
            f"{where}: {text!r} contains {bad!r}; a channel allows A-Z a-z 0-9 and _ - : . @ / ="
        )
    return _Literal(literal)


class ChannelTemplate:
    """A channel name with placeholders for parts of a record (see the module docstring)."""

    __slots__ = ("_parts", "text")

    def __init__(self, text: str, parts: tuple[_Part, ...]) -> None:
        self.text = text
        self._parts = parts

    @classmethod
    def parse(cls, text: str, *, where: str = "channel") -> ChannelTemplate:
        """Parse a channel template.

        Args:
            text: the template, e.g. ``"room:{value.room_id}"``.
            where: the setting's name, for the error message.

        Raises:
            ConfigError: empty, an unknown placeholder, an unmatched brace, or a character
                no channel name allows.
        """
        if not text:
            raise ConfigError(f"{where}: the channel template is empty")
        parts: list[_Part] = []
        end = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > end:
                parts.append(_parse_literal(where, text, text[end : match.start()]))
            parts.append(_parse_placeholder(where, text, match.group(1)))
            end = match.end()
        if end < len(text):
            parts.append(_parse_literal(where, text, text[end:]))
        return cls(text, tuple(parts))

    def render(self, record: KafkaRecord, value: object) -> ChannelName | Skip:
        """Return the channel of ``record`` (whose JSON value decoded is ``value``), or
        why it has none."""
        try:
            name = "".join(_render_part(part, record, value) for part in self._parts)
        except _Missing as missing:
            return Skip("no_channel", str(missing))
        try:
            return parse_channel(name)
        except BadRequest as error:
            return Skip("no_channel", f"{self.text!r} gives {name[:300]!r}: {error.message}")


def _render_part(part: _Part, record: KafkaRecord, value: object) -> str:
    match part:
        case _Literal(text):
            return text
        case _Key():
            if record.key is None:
                raise _Missing("the record has no key")
            return _text(record.key, "its key")
        case _Header(name):
            found = [data for header, data in record.headers if header == name]
            if not found:
                raise _Missing(f"the record has no header {name!r}")
            return _text(found[-1], f"header {name!r}")
        case _ValueField(path):
            field = _field(value, path)
            # bool is an int in Python, but True is no room id.
            if isinstance(field, str) or (isinstance(field, int) and not isinstance(field, bool)):
                return str(field)
            raise _Missing(
                f"value.{'.'.join(path)} is {_json_type(field)}; a channel takes a string or an "
                "integer"
            )
        case _Topic():
            return record.topic
        case _Partition():
            return str(record.partition)


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise _Missing(f"{what} is not UTF-8 text") from None


def _field(value: object, path: tuple[str, ...]) -> object:
    for depth, name in enumerate(path):
        if not isinstance(value, dict) or name not in value:
            raise _Missing(f"the value has no field value.{'.'.join(path[: depth + 1])}")
        value = value[name]
    return value


def _json_type(value: object) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case float():
            return "a number with a fraction"
        case list():
            return "an array"
        case dict():
            return "an object"
        case _:
            return type(value).__name__


# -- the data, and the whole mapping ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DataSelection:
    """Which part of the JSON value becomes the data: all of it (``path == ()``) or a field."""

    path: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, *, where: str = "data") -> DataSelection:
        """Parse ``"value"`` or ``"value.PATH"``.

        Raises:
            ConfigError: anything else.
        """
        if text == "value":
            return cls()
        kind, dot, rest = text.partition(".")
        if kind != "value" or not dot:
            raise ConfigError(f"{where}: {text!r} is not value or value.FIELD")
        return cls(_parse_path(where, text, rest))

    @property
    def text(self) -> str:
        """The selection as written in the settings."""
        return ".".join(("value", *self.path))


@dataclass(frozen=True, slots=True)
class RecordMapping:
    """A channel template and a data selection: how every record of a source is published."""

    channel: ChannelTemplate
    data: DataSelection

    def map(self, record: KafkaRecord) -> Mapped | Skip:
        """Return the channel and data for ``record``, or why it is skipped.

        Never raises: whatever bytes a record holds, the answer is a value.
        """
        if record.value is None:
            return Skip("not_json", "the record has no value (a tombstone)")
        try:
            value: object = msgspec.json.decode(record.value)
        except msgspec.DecodeError as error:
            return Skip("not_json", f"the value is not JSON: {error}")
        channel = self.channel.render(record, value)
        if isinstance(channel, Skip):
            return channel
        if not self.data.path:
            # Already valid JSON: kept as written, on one line.
            return Mapped(channel, single_line_json(record.value.strip()))
        try:
            field = _field(value, self.data.path)
        except _Missing as missing:
            return Skip("no_data", str(missing))
        return Mapped(channel, msgspec.json.encode(field))
