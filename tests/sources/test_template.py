"""Channel templates (sources/template.py): parsing and rendering, pure."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tidings.errors import ConfigError
from tidings.sources.template import ChannelTemplate

FIELD_NAMES = st.sampled_from(["id", "room_id", "user", "_x", "a1", "tenant_2"])
LITERALS = st.text(st.sampled_from("abc:._-/@="), max_size=6)
VALUES = st.one_of(st.integers(), st.text(st.sampled_from("xyz019-"), min_size=1, max_size=5))


@given(st.lists(st.tuples(LITERALS, FIELD_NAMES), max_size=4), LITERALS, st.data())
def test_render_fills_each_placeholder_with_its_value_as_text(
    parts: list[tuple[str, str]], tail: str, data: st.DataObject
) -> None:
    text = "".join(f"{literal}{{{field}}}" for literal, field in parts) + tail
    assume(text)  # an empty template is refused (below)
    record = {field: data.draw(VALUES) for _, field in parts}
    template = ChannelTemplate.parse("channel", text)
    assert template.fields == tuple(field for _, field in parts)
    assert template.render(record) == text.format(**record)


@given(st.lists(FIELD_NAMES, min_size=1, max_size=4, unique=True), st.data())
def test_render_is_none_when_any_placeholder_is_null_or_missing(
    fields: list[str], data: st.DataObject
) -> None:
    template = ChannelTemplate.parse("channel", ":".join(f"{{{f}}}" for f in fields))
    record: dict[str, object] = {field: 1 for field in fields}
    unset = data.draw(st.sampled_from(fields))
    if data.draw(st.booleans()):
        record[unset] = None
    else:
        del record[unset]
    assert template.render(record) is None


def test_doubled_braces_are_literal_braces() -> None:
    template = ChannelTemplate.parse("channel", "a{{b}}:{id}")
    assert template.render({"id": 7}) == "a{b}:7"


@pytest.mark.parametrize(
    "text", ["", "room:{", "room:}", "{0}", "{a.b}", "{a[0]}", "{a!r}", "{a:>3}"]
)
def test_a_template_that_is_not_plain_placeholders_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="channel"):
        ChannelTemplate.parse("channel", text)
