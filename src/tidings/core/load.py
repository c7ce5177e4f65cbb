"""A node's load as load balancers read it: ``GET /load`` and HAProxy's agent check. Pure.

A least-connections balancer already sends each new connection to the node holding
fewest; what a node adds is what the balancer cannot see: how far it is from its own
``max_connections`` (the weight: its headroom, so a full node is sent nothing), and that
it is stopping (``drain``: send it nothing new, leave its connections be; tidings then
moves them itself, PROTOCOL.md §3's ``disconnect`` with reconnect advice).

HAProxy's agent check (HAProxy configuration manual, "agent-check"): HAProxy connects to
the agent port, reads one ASCII line and closes. Words of that line used here: ``up``
(operational, if health checks agree), ``ready`` (clears a ``drain`` or ``maint`` the
agent set earlier: a restarted node must say it, or it stays drained), ``drain``, and
``N%`` (the weight, as a percentage of the ``weight`` in the configuration).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """How loaded a node is: its connections, its ``max_connections`` and whether it is
    draining (stopping: it takes no new connection)."""

    connections: int
    limit: int
    draining: bool

    @property
    def weight_percent(self) -> int:
        """The share of the configured weight the node should get: its headroom, from
        100 (idle) to 0 (full, or draining)."""
        if self.draining or self.limit <= 0:
            return 0
        headroom = (self.limit - self.connections) / self.limit
        return max(0, min(100, round(headroom * 100)))

    def fields(self) -> dict[str, int | bool]:
        """The JSON fields of ``GET /load``."""
        return {
            "connections": self.connections,
            "limit": self.limit,
            "weight": self.weight_percent,
            "draining": self.draining,
        }


def agent_reply(load: NodeLoad) -> bytes:
    """Return the line answering one HAProxy agent check for ``load``."""
    if load.draining:
        return b"drain\n"
    return f"up ready {load.weight_percent}%\n".encode("ascii")
