"""Fuzzing the query parsers of polling and SSE: whatever a client puts in the query
string or the resume headers, parsing ends in a parsed request or a ``BadRequest`` that
the transport answers with 400 — never another exception (which would be a 500 and a
traceback). Bounded: a fixed number of examples, no deadline."""

from __future__ import annotations

import string
from urllib.parse import quote

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tidings.core.cursor import encode_cursor
from tidings.core.publication import Position
from tidings.core.resume import parse_channel_list, resume_positions
from tidings.errors import BadRequest
from tidings.transports.poll import PollQuery, parse_poll_query

NAMES = ("channel", "cursor", "since", "wait", "limit", "token", "junk", "")
CHANNEL_ALPHABET = string.ascii_letters + string.digits + "_-:.@/="

# Values near the valid ones (channel names, digits, positions, cursors) and anything.
near_values = st.one_of(
    st.text(CHANNEL_ALPHABET, min_size=0, max_size=40),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.text(string.digits, min_size=15, max_size=40),
    # Past the interpreter's own limit of int() (4,300 digits): a ValueError, not a 400.
    st.just("7" * 5000),
    st.builds(
        lambda epoch, offset: f"{epoch}:{offset}",
        st.text(CHANNEL_ALPHABET, max_size=40),
        st.integers(min_value=-5, max_value=2**70),
    ),
    st.builds(
        lambda channel, offset: encode_cursor({channel: Position("ep", offset)}),
        st.sampled_from(["room:1", "a", "user:x"]),
        st.integers(min_value=0, max_value=2**53),
    ),
    st.text(max_size=40),
)
pairs = st.lists(st.tuples(st.sampled_from(NAMES), near_values), max_size=12)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def query_of(items: list[tuple[str, str]]) -> str:
    return "&".join(f"{quote(name)}={quote(value)}" for name, value in items)


@FUZZ
@given(pairs, st.one_of(st.none(), st.text(max_size=60)))
def test_a_poll_query_parses_or_is_a_bad_request(
    items: list[tuple[str, str]], if_none_match: str | None
) -> None:
    headers = {"if-none-match": if_none_match}
    try:
        query = parse_poll_query(query_of(items), headers.get)
    except BadRequest:
        return
    assert isinstance(query, PollQuery)
    assert query.channels  # a poll names at least one channel


@FUZZ
@given(pairs, st.one_of(st.none(), st.text(CHANNEL_ALPHABET, max_size=80), st.text(max_size=40)))
def test_an_sse_request_resumes_or_is_a_bad_request(
    items: list[tuple[str, str]], last_event_id: str | None
) -> None:
    # What ``/sse`` does with its query and ``Last-Event-ID`` before a stream opens.
    values: dict[str, list[str]] = {}
    for name, value in items:
        values.setdefault(name, []).append(value)
    try:
        channels = parse_channel_list(values.get("channel", []))
        cursors = values.get("cursor", [])
        positions = resume_positions(
            channels,
            last_event_id=last_event_id,
            cursor=cursors[0] if cursors else None,
            since=values.get("since", []),
        )
    except BadRequest:
        return
    assert set(positions) <= set(channels)
