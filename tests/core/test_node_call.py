"""Signed calls between the nodes of a ring (core/node_call.py): a call verifies under
the secret it was signed with, and any change to it, another secret, or a time too far
from the receiver's clock is refused."""

from __future__ import annotations

from typing import Final

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tidings.core.node_call import (
    MAX_CLOCK_SKEW_S,
    NodeCall,
    canonical_target,
    sign_node_call,
    verify_node_call,
)
from tidings.errors import Unauthorized

SECRET: Final = b"s" * 32
NOW_S: Final = 1_800_000_000

methods = st.sampled_from(["GET", "POST"])
targets = st.from_regex(r"/api/[a-z]{1,10}(\?channel=[a-z]{1,5}:[a-z0-9]{1,8})?", fullmatch=True)
bodies = st.binary(max_size=200)
versions = st.integers(min_value=0, max_value=2**40)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(method=methods, target=targets, body=bodies, version=versions)
def test_a_signed_call_verifies_and_carries_its_ring_version(
    method: str, target: str, body: bytes, version: int
) -> None:
    header = sign_node_call(SECRET, method, target, body, now_s=NOW_S, ring_version=version)
    assert verify_node_call(SECRET, header, method, target, body, now_s=NOW_S) == NodeCall(version)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    method=methods,
    target=targets,
    body=bodies,
    version=versions,
    change=st.sampled_from(["method", "target", "body", "version", "secret"]),
)
def test_a_call_changed_in_any_part_is_refused(
    method: str, target: str, body: bytes, version: int, change: str
) -> None:
    header = sign_node_call(SECRET, method, target, body, now_s=NOW_S, ring_version=version)
    secret = SECRET
    if change == "method":
        method = "PUT"
    elif change == "target":
        target += "x"
    elif change == "body":
        body += b" "
    elif change == "version":
        header = header.replace(f"v={version},", f"v={version + 1},")
    else:
        secret = b"t" * 32
    with pytest.raises(Unauthorized, match="signature does not match"):
        verify_node_call(secret, header, method, target, body, now_s=NOW_S)


@pytest.mark.parametrize("offset_s", [MAX_CLOCK_SKEW_S + 1, -MAX_CLOCK_SKEW_S - 1])
def test_a_call_too_far_from_the_receivers_clock_is_refused(offset_s: int) -> None:
    header = sign_node_call(SECRET, "GET", "/api/history", b"", now_s=NOW_S, ring_version=1)
    with pytest.raises(Unauthorized, match="at most 30 s"):
        verify_node_call(SECRET, header, "GET", "/api/history", b"", now_s=NOW_S + offset_s)


@pytest.mark.parametrize("offset_s", [MAX_CLOCK_SKEW_S, -MAX_CLOCK_SKEW_S])
def test_a_call_within_the_clock_skew_verifies(offset_s: int) -> None:
    header = sign_node_call(SECRET, "GET", "/api/history", b"", now_s=NOW_S, ring_version=1)
    verify_node_call(SECRET, header, "GET", "/api/history", b"", now_s=NOW_S + offset_s)


@pytest.mark.parametrize(
    "header", ["", "t=1,v=2", "t=x,v=1,s=ab", "t=1,v=-1,s=ab", "s=ab", "t=1,v=1,s=" + "a" * 300]
)
def test_a_malformed_header_is_refused(header: str) -> None:
    with pytest.raises(Unauthorized, match="malformed"):
        verify_node_call(SECRET, header, "GET", "/api/history", b"", now_s=NOW_S)


def test_the_signed_target_does_not_depend_on_how_the_query_is_quoted() -> None:
    assert (
        canonical_target("/api/history", "channel=doc%3A9&limit=5")
        == canonical_target("/api/history", "limit=5&channel=doc:9")
        == "/api/history?channel=doc%3A9&limit=5"
    )
    assert canonical_target("/api/publish", "") == "/api/publish"
