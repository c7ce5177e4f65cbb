"""The drain schedule: when each client of a stopping node is disconnected, and how long
it is told to wait before reconnecting elsewhere. Pure: times are milliseconds since the
drain began, handed in by the caller.

Theory of operation
-------------------
A node that stops (SIGTERM) must let its clients go to the other nodes without a
stampede: all of them reconnecting in the same few milliseconds is a burst the rest
of the cluster has to absorb at once. Two levers, both used:

* the node *spreads the disconnects*: client ``k`` of ``n`` (in the order the node
  lists them) is disconnected at ``d_k = floor(k * spacing)`` with
  ``spacing = min(window / n, 1000 / rate)``: at the reconnect rate when the window
  allows it, faster when it does not, so every disconnect is sent within the window;
* each ``disconnect`` carries a ``delay`` (docs/protocol.md §3, 1.1): the client waits that
  long before reconnecting. Client ``k``'s reconnect *slot* is
  ``r_k = max(d_k, ceil(k * 1000 / rate))``, and its delay is the time from the moment
  the disconnect is actually sent to its slot (``DrainStep.delay_ms``), so a node that
  runs late (a loaded machine) does not move its clients' slots, let alone bunch them.

Invariants (``tests/core/test_drain.py`` states them as properties): disconnect times
are non-decreasing and within the window; slots are non-decreasing; any half-open
1000 ms interval holds at most ``ceil(rate)`` slots; by ``t`` ms after the drain began
at most ``t * rate / 1000 + 1`` slots have come (cumulatively, the reconnects never
run ahead of the rate). A client that ignores ``delay`` still benefits from the
spread disconnects, at the rate while the window allows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class DrainStep:
    """One client's part of a drain: when it is disconnected and when it may be back."""

    disconnect_at_ms: int
    reconnect_at_ms: int

    def delay_ms(self, now_ms: float) -> int:
        """Return the ``delay`` to send at ``now_ms``: the time left until the slot."""
        return max(0, self.reconnect_at_ms - math.floor(now_ms))


def plan_drain(count: int, window_ms: int, rate: float) -> list[DrainStep]:
    """Return the steps of a drain of ``count`` clients, in disconnect order.

    Args:
        count: how many clients the node holds.
        window_ms: every disconnect is sent within this long after the drain began.
        rate: the most reconnects per second the schedule asks of the other nodes.

    Raises:
        ValueError: ``rate`` is not a positive number, or ``count`` or ``window_ms`` is negative.
    """
    if not 0 < rate < math.inf or count < 0 or window_ms < 0:
        raise ValueError(
            f"need 0 < rate < inf, count >= 0, window_ms >= 0; got {rate}, {count}, {window_ms}"
        )
    if count == 0:
        return []
    # Exact arithmetic: a float rounding a slot up by one millisecond could put one
    # slot too many in some second.
    per_slot = Fraction(1000) / Fraction(rate)  # milliseconds between slots, exactly
    per_slot_n, per_slot_d = per_slot.numerator, per_slot.denominator
    by_window = window_ms * per_slot_d <= per_slot_n * count  # window / count <= 1000 / rate
    steps = []
    for k in range(count):
        disconnect_at = k * window_ms // count if by_window else k * per_slot_n // per_slot_d
        slot = max(disconnect_at, -(-k * per_slot_n // per_slot_d))
        steps.append(DrainStep(disconnect_at, slot))
    return steps
