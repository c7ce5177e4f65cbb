"""Deadlines (transports/deadlines.py): many time-outs sharing one loop timer per grain,
never firing early, and never after being cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tidings.transports.deadlines import Deadlines

GRAIN_S = 0.01
WAIT_S = 10.0


async def test_a_deadline_fires_once_and_never_before_its_delay() -> None:
    loop = asyncio.get_running_loop()
    fired: list[float] = []
    done = asyncio.Event()
    started = loop.time()

    def expire() -> None:
        fired.append(loop.time())
        done.set()

    Deadlines(GRAIN_S).call_after(0.03, expire)
    await asyncio.wait_for(done.wait(), WAIT_S)
    assert len(fired) == 1
    assert fired[0] >= started + 0.03


async def test_a_cancelled_deadline_never_fires() -> None:
    deadlines = Deadlines(GRAIN_S)
    fired: list[str] = []
    later = asyncio.Event()
    deadlines.call_after(0.01, lambda: fired.append("cancelled")).cancel()
    deadlines.call_after(0.02, later.set)  # fires after the cancelled one would have
    await asyncio.wait_for(later.wait(), WAIT_S)
    assert fired == []


async def test_a_callback_may_cancel_another_deadline_of_its_grain() -> None:
    deadlines = Deadlines(1.0)  # a coarse grain: both land in the same one
    fired: list[str] = []
    done = asyncio.Event()
    holder: dict[str, Any] = {}

    def first() -> None:
        fired.append("one")
        holder["other"].cancel()
        done.set()

    def second() -> None:
        fired.append("two")
        holder["first"].cancel()
        done.set()

    holder["first"] = deadlines.call_after(0.0, first)
    holder["other"] = deadlines.call_after(0.0, second)
    await asyncio.wait_for(done.wait(), WAIT_S)  # the grain fires all at once, in one call
    assert len(fired) == 1  # whichever ran first cancelled the other


async def test_deadlines_of_one_grain_share_one_loop_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        timers.append(when)
        return call_at(when, callback, *args)

    monkeypatch.setattr(loop, "call_at", counting_call_at)
    deadlines = Deadlines(60.0)
    handles = [deadlines.call_after(1.0, lambda: None) for _ in range(500)]
    assert len(timers) <= 2  # one grain, or two if the call straddled a grain boundary
    for handle in handles:
        handle.cancel()
