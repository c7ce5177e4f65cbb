"""The refusal log (transports/refusals.py): one INFO line per refusal with its reason
and the client's address, a token bucket per reason against floods, and counters."""

from __future__ import annotations

import logging

import pytest

from tidings.errors import BadRequest, PermissionDenied, TooManyRequests, Unauthorized
from tidings.transports.refusals import LOG_BURST, LOG_RATE_PER_S, Refusals, peer_text

PEER = ("203.0.113.7", 50123)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "tidings.transports.refusals" and record.levelno == logging.INFO
    ]


def test_a_refusal_is_one_info_line_with_the_reason_and_the_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    refusals = Refusals(FakeClock())
    refusals.refused_origin(PEER, "https://evil.example")
    assert refusal_lines(caplog) == [
        "refused an origin from 203.0.113.7:50123: https://evil.example is not in allowed_origins"
    ]
    assert refusals.counts["origin"] == 1


def test_a_flood_is_logged_up_to_the_burst_then_summed_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    clock = FakeClock()
    refusals = Refusals(clock)
    for _ in range(LOG_BURST + 50):
        refusals.refused(
            "api_key", PEER, "wrong api key: the key sent is not this server's api_key"
        )
    assert len(refusal_lines(caplog)) == LOG_BURST
    assert refusals.counts["api_key"] == LOG_BURST + 50  # counted, all of them
    clock.now_s += 1 / LOG_RATE_PER_S
    refusals.refused("api_key", PEER, "wrong api key: the key sent is not this server's api_key")
    lines = refusal_lines(caplog)
    assert lines[-2] == "50 similar refusals (a server API call) suppressed"
    assert lines[-1].startswith("refused a server API call from 203.0.113.7:50123")


def test_each_reason_has_its_own_budget(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    refusals = Refusals(FakeClock())
    for _ in range(LOG_BURST + 5):
        refusals.refused("token", PEER, "the connection token has expired: get a new one")
    refusals.refused("slow_consumer", PEER, "1,048,576 bytes pending (abc.1)")
    assert refusal_lines(caplog)[-1] == (
        "refused a slow consumer from 203.0.113.7:50123: 1,048,576 bytes pending (abc.1)"
    )


def test_request_errors_are_refusals_by_their_code() -> None:
    refusals = Refusals(FakeClock())
    refusals.refused_request(Unauthorized("a connection token is required"), PEER)
    refusals.refused_request(Unauthorized("wrong key"), PEER, api=True)
    refusals.refused_request(PermissionDenied("not yours"), PEER)
    refusals.refused_request(TooManyRequests("too many subscriptions"), PEER)
    refusals.refused_request(BadRequest("not JSON"), PEER)  # a mistake, not a refusal
    assert {reason: n for reason, n in refusals.counts.items() if n} == {
        "token": 1,
        "api_key": 1,
        "forbidden": 1,
        "limit": 1,
    }


def test_disconnects_are_counted_by_close_code() -> None:
    refusals = Refusals(FakeClock())
    for code in (4001, 4500, 4500):
        refusals.disconnected(code)
    assert refusals.disconnects == {4001: 1, 4500: 2}


def test_addresses_read_as_host_and_port() -> None:
    assert peer_text(("::1", 8000)) == "[::1]:8000"
    assert peer_text(None) == "unknown"
