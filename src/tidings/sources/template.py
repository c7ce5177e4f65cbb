"""Channel templates: ``room:{room_id}`` names each record's channel from its fields.

Pure. A template is literal text with ``{field}`` placeholders (``{{`` and ``}}`` are
literal braces); a field is a column (or record field) name, and its value is written
as text: an integer as its digits, a string as itself. A record whose placeholder field
is missing or NULL has no channel (``render`` returns ``None``); the source skips it.
Whether the rendered name is a valid channel is the publisher's to say.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from tidings.errors import ConfigError

_FIELD_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True, slots=True)
class ChannelTemplate:
    """A parsed channel template: literal texts between placeholder fields.

    ``literals`` has one more item than ``fields``: literal, field, literal, ...
    """

    text: str
    literals: tuple[str, ...]
    fields: tuple[str, ...]

    @classmethod
    def parse(cls, setting: str, text: str) -> ChannelTemplate:
        """Parse ``text``, the value of ``setting`` (named in errors).

        Raises:
            ConfigError: unbalanced braces, a placeholder that is not a plain name
                (``{0}``, ``{a.b}``, ``{a!r}``, ``{a:>3}``), or no text at all.
        """
        if not text:
            raise ConfigError(f"{setting} must not be empty")
        literals: list[str] = []
        fields: list[str] = []
        pending = ""
        try:
            parsed = list(string.Formatter().parse(text))
        except ValueError as exc:
            raise ConfigError(f"{setting} {text!r} is not a valid template: {exc}") from None
        for literal, field, spec, conversion in parsed:
            pending += literal
            if field is None:
                continue
            if spec or conversion or _FIELD_NAME.fullmatch(field) is None:
                raise ConfigError(
                    f"{setting} {text!r}: each placeholder must be a plain column name "
                    f"such as {{room_id}}, got {{{field}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}"
                )
            literals.append(pending)
            fields.append(field)
            pending = ""
        literals.append(pending)
        return cls(text, tuple(literals), tuple(fields))

    def render(self, record: Mapping[str, object]) -> str | None:
        """Return the channel name of ``record``, or ``None`` if a field is NULL/missing."""
        parts = [self.literals[0]]
        for field, literal in zip(self.fields, self.literals[1:], strict=True):
            value = record.get(field)
            if value is None:
                return None
            parts.append(_as_text(value))
            parts.append(literal)
        return "".join(parts)


def _as_text(value: object) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)
