"""The lease's deadline as a node can prove it (core/lease_deadline.py): confirmed only
while every expiry etcd could have set lies ahead by the margin, whatever the order of
renewals, answers and failures."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.core.lease_deadline import LeaseDeadline, margin_s


@dataclass(frozen=True)
class Renewed:
    sent_s: float
    ttl_s: float


@dataclass(frozen=True)
class Failed:
    at_s: float


@dataclass(frozen=True)
class Lost:
    pass


times = st.floats(min_value=0, max_value=1000, allow_nan=False)
ttls = st.floats(min_value=2, max_value=60, allow_nan=False)
events = st.lists(
    st.one_of(
        st.builds(Renewed, times, ttls),
        st.builds(Failed, times),
        st.just(Lost()),
    ),
    max_size=30,
)


def replay(history: list[Renewed | Failed | Lost]) -> LeaseDeadline:
    lease = LeaseDeadline()
    for event in history:
        if isinstance(event, Renewed):
            lease.renewed(event.sent_s, event.ttl_s)
        elif isinstance(event, Failed):
            lease.failed(event.at_s)
        else:
            lease.lost()
    return lease


def latest_expiry_s(history: list[Renewed | Failed | Lost]) -> float | None:
    """The latest expiry etcd may hold since the last loss: each renewal sent at
    ``sent_s`` was handled at ``sent_s`` or later, so it lives to ``sent_s + ttl_s`` at
    least; the latest of those is a lower bound on etcd's expiry."""
    expiry = None
    for event in history:
        if isinstance(event, Lost):
            expiry = None
        elif isinstance(event, Renewed):
            end = event.sent_s + event.ttl_s
            expiry = end if expiry is None else max(expiry, end)
    return expiry


@given(events, times)
def test_confirmed_only_a_margin_before_any_expiry_etcd_may_hold(
    history: list[Renewed | Failed | Lost], now_s: float
) -> None:
    lease = replay(history)
    expiry = latest_expiry_s(history)
    if lease.is_confirmed(now_s):
        assert expiry is not None
        # The margin of the renewal that set the deadline (the smallest a ttl has here).
        assert now_s < expiry - margin_s(2)


@given(events, times, ttls, st.floats(min_value=0, max_value=0.999))
def test_a_renewal_confirms_until_its_deadline(
    history: list[Renewed | Failed | Lost], sent_s: float, ttl_s: float, fraction: float
) -> None:
    lease = replay(history)
    lease.renewed(sent_s, ttl_s)
    deadline_s = sent_s + ttl_s - margin_s(ttl_s)
    assert lease.is_confirmed(sent_s + (deadline_s - sent_s) * fraction)
    assert lease.unreachable_since_s is None


@given(events)
def test_a_lost_lease_is_unconfirmed_until_renewed(history: list[Renewed | Failed | Lost]) -> None:
    lease = replay(history)
    lease.lost()
    assert not lease.is_confirmed(0.0)
    assert lease.unreachable_since_s is None  # etcd answered: it is reachable


@given(times, ttls, st.lists(times, min_size=1, max_size=10))
def test_failures_keep_the_deadline_and_the_first_failure_time(
    sent_s: float, ttl_s: float, failures: list[float]
) -> None:
    lease = LeaseDeadline()
    lease.renewed(sent_s, ttl_s)
    deadline_s = lease.deadline_s
    for at_s in failures:
        lease.failed(at_s)
    assert lease.deadline_s == deadline_s
    assert lease.unreachable_since_s == failures[0]


def test_a_late_answer_to_an_older_keep_alive_does_not_move_the_deadline_back() -> None:
    lease = LeaseDeadline()
    lease.renewed(10.0, 8.0)
    lease.renewed(5.0, 8.0)
    assert lease.deadline_s == 10.0 + 8.0 - margin_s(8.0)


def test_the_margin_is_a_quarter_of_the_lease() -> None:
    assert margin_s(10.0) == 2.5
    with pytest.raises(ValueError, match="time to live"):
        LeaseDeadline().renewed(0.0, 0.0)
