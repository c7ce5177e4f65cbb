"""How the PostgreSQL broker carries publications in NOTIFY notices (postgres_rows.py):
a notice that fits carries the publication exactly; one that does not names the
channel only; anything else is refused, never misread."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from tidings.brokers.postgres_rows import NOTICE_LIMIT, Notice, notice_body, read_notice
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position, Publication

channels = st.from_regex(r"[a-z]{1,8}:[A-Za-z0-9_\-.@/=]{1,40}", fullmatch=True).map(ChannelName)
texts = st.text(max_size=30)
infos = st.none() | st.builds(ClientInfo, texts, texts)
json_data = st.recursive(
    st.none() | st.booleans() | st.integers() | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=20,
).map(lambda value: json.dumps(value, ensure_ascii=False).encode())


@given(
    channel=channels,
    ts=st.integers(0, 2**53),
    key=st.none() | texts,
    info=infos,
    data=json_data,
    offset=st.integers(1, 10**9),
)
def test_a_notice_that_fits_carries_the_publication_exactly(
    *,
    channel: ChannelName,
    ts: int,
    key: str | None,
    info: ClientInfo | None,
    data: bytes,
    offset: int,
) -> None:
    body = notice_body(channel, ts, key, info, data)

    notice = read_notice(f"e-1 {offset} {body}")

    assert len(body.encode()) <= NOTICE_LIMIT
    expected = Publication(channel, "e-1", offset, data, ts, key, info)
    assert notice == Notice(channel, Position("e-1", offset), expected)


def test_a_publication_too_large_is_announced_by_channel_and_position_only() -> None:
    channel = ChannelName("room:big")
    data = b'"' + b"x" * NOTICE_LIMIT + b'"'

    body = notice_body(channel, 1, None, None, data)

    assert read_notice(f"e-1 7 {body}") == Notice(channel, Position("e-1", 7), None)


def test_an_unreadable_notice_is_refused() -> None:
    for payload in ("", "e-1", "e-1 x F[]", "e-1 3 X", "e-1 3 F[1,2]", "e-1 3 F{"):
        assert read_notice(payload) is None
