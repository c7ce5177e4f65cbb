"""Scaling a ring under load, end to end: a real etcd of
the test's own, three real ``tidings serve`` nodes, 1,000 subscribers over WebSocket,
SSE and polling on 500 channels, 500 publications a second; a fourth node joins, one
leaves (SIGTERM, planned), one is killed (SIGKILL). The scenario is
``benchmarks/ring_scaling.py``, run once for the module (about half a minute); each
test asserts one promise on its report (``benchmarks/ring_ledger.py`` defines lost,
repeated and ``recovered: false``).

A *planned* change (a join, a leave) hands each moving key's history over to its new
owner (docs/modes/hashing.md, "Scaling without loss"): nothing lost, nothing repeated,
never ``recovered: false``. For every step, planned or not: no publication repeated or
dropped silently (a subscriber that missed one was told ``recovered: false`` about
it), the reconnects within the rate the nodes promise, every subscriber back at its
channel's owner, and the keys that moved those the ring moves (not modulo hashing's).
"""

from __future__ import annotations

import asyncio

import pytest
from benchmarks.ring_scaling import Report, Settings, Step, run_scenario

from tests.support.services import require_binary

pytestmark = pytest.mark.e2e

SETTINGS = Settings(subscribers=1000, channels=500, rate=500.0, settle_s=2.0)
PLANNED = ("join", "leave")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    require_binary("etcd")
    outcome = asyncio.run(run_scenario(SETTINGS, tmp_path_factory.mktemp("ring-scaling")))
    print("\n".join(outcome.lines()))  # shown with -s, and on a failure
    return outcome


def said(step: Step) -> str:
    return (
        f"{step.name}: lost {step.lost} (channels {sorted(step.lost_channels)[:10]}), "
        f"repeated {step.repeated}, recovered:false {step.gaps} (covering {step.covered}), "
        f"delivered {step.delivered} of {step.due}"
    )


@pytest.mark.parametrize("name", PLANNED)
def test_a_planned_change_loses_nothing_and_never_says_recovered_false(
    report: Report, name: str
) -> None:
    step = report.step(name)
    assert step.acknowledged > 0
    assert (step.lost, step.repeated, step.gaps, step.covered) == (0, 0, 0, 0), said(step)


@pytest.mark.parametrize("name", ["steady", *PLANNED, "kill"])
def test_no_step_repeats_a_publication_or_drops_one_silently(report: Report, name: str) -> None:
    step = report.step(name)
    assert step.acknowledged > 0
    assert (step.lost, step.repeated) == (0, 0), said(step)


def test_a_killed_node_costs_its_subscribers_a_notice_not_a_silent_gap(report: Report) -> None:
    step = report.step("kill")
    assert step.moved_measured > 0
    # Its subscribers heard recovered: false (one per subscriber of a moved channel at
    # most, as each resumes once on the new owner) ...
    assert step.gaps > 0, said(step)
    # ... and nothing else went missing.
    assert (step.lost, step.repeated) == (0, 0), said(step)
    assert report.undelivered_at_end == 0


@pytest.mark.parametrize("name", PLANNED)
def test_reconnects_never_run_ahead_of_the_rate_the_nodes_promise(
    report: Report, name: str
) -> None:
    # From the moment the ring changed in etcd: never more reconnects than the moving
    # nodes' rates allow (ring_move_rate, or drain_rate, + 1 each), cumulatively; the
    # form of the bound that subscribers reading late cannot break (ring_scaling.py).
    step = report.step(name)
    assert step.bound is not None
    assert step.reconnects > 0
    assert step.ahead_of_bound <= 0, (step.ahead_of_bound, step.bound)


@pytest.mark.parametrize("name", [*PLANNED, "kill"])
def test_every_subscriber_is_back_at_its_owner_after_each_step(report: Report, name: str) -> None:
    # The scenario waits (bounded) for every subscriber to be subscribed at its
    # channel's owner after each step, and raises if one is not: a figure here means
    # each one came back.
    assert report.step(name).converge_s is not None


@pytest.mark.parametrize("name", [*PLANNED, "kill"])
def test_the_keys_that_move_are_the_rings_not_modulos(report: Report, name: str) -> None:
    step = report.step(name)
    assert step.routes_match_ring
    assert step.moved_measured == step.moved_ring
    assert step.moved_ring < step.moved_modulo
