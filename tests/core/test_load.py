"""A node's load for load balancers (core/load.py): weight as headroom, and the agent
check's replies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.load import NodeLoad, agent_reply


@given(st.integers(min_value=0, max_value=20_000), st.integers(min_value=1, max_value=10_000))
def test_weight_is_a_percentage_that_falls_as_connections_grow(
    connections: int, limit: int
) -> None:
    load = NodeLoad(connections, limit, draining=False)
    more = NodeLoad(connections + 1, limit, draining=False)
    assert 0 <= load.weight_percent <= 100
    assert more.weight_percent <= load.weight_percent


def test_idle_node_has_full_weight_and_full_node_none() -> None:
    assert NodeLoad(0, 1000, draining=False).weight_percent == 100
    assert NodeLoad(270, 1000, draining=False).weight_percent == 73
    assert NodeLoad(1000, 1000, draining=False).weight_percent == 0


def test_agent_reply_says_up_and_ready_with_the_weight() -> None:
    assert agent_reply(NodeLoad(270, 1000, draining=False)) == b"up ready 73%\n"


def test_draining_node_tells_the_agent_drain_and_has_no_weight() -> None:
    load = NodeLoad(5, 1000, draining=True)
    assert agent_reply(load) == b"drain\n"
    assert load.fields() == {"connections": 5, "limit": 1000, "weight": 0, "draining": True}
