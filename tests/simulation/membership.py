"""A simulated node's membership of the ring: joining, leaving, a restart's crash
removal, and making a transition final.

Each is an etcd compare-and-swap over the record the node last learned (``etcd_write``):
if another node wrote first, the write fails and the node acts again on the next record
it learns. The record's changes are the core's (``RingRecord.joined``, ``left``,
``crashed``, ``finalized``; ``finalizable`` says when every live giver has handed).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.core.handover import RingRecord, finalizable

if TYPE_CHECKING:
    from tests.simulation.nodes import Node
    from tests.simulation.world import World


def change_membership(node: Node) -> None:
    """Join or leave the ring if ``node`` was asked to and the ring is settled."""
    world, view = node.world, node.view
    if node.restarting:
        if node.node_id in view.nodes or node.node_id in (view.previous or ()):
            # Its previous incarnation died: say so, as its lease expiring would have.
            etcd_write(world, view, view.crashed(node.node_id))
            return
        node.restarting = False
        node.joining = True
        world.roles_changed()
    if node.joining:
        if node.node_id in view.nodes:
            node.joining = False
        elif not view.in_transition:
            etcd_write(world, view, view.joined(node.node_id, f"http://{node.node_id}"))
    if node.leaving and not view.in_transition:
        if node.node_id in view.nodes and len(view.nodes) > 1:
            etcd_write(world, view, view.left(node.node_id))
        elif node.node_id not in view.nodes:
            world.trace("%s has left the ring and exits", node.node_id)
            world.etcd.members.pop(node.node_id, None)
            world.exit(node)


def try_finalize(node: Node) -> None:
    """Make the transition final if every live giver has handed (a watch of the handed
    keys and the members calls this too)."""
    view, etcd = node.view, node.world.etcd
    if not node.alive or not view.in_transition:
        return
    if finalizable(view, etcd.members, etcd.handed.get(view.version, ())):
        etcd_write(node.world, view, view.finalized())


def etcd_write(world: World, expected: RingRecord, record: RingRecord) -> None:
    """Compare-and-swap ``record`` over ``expected``; announce it if it was written."""
    if world.etcd.compare_and_swap(expected.version, record):
        world.trace("etcd: v%d %s", record.version, describe(record))
        world.watch_record()


def describe(record: RingRecord) -> str:
    """The record in a few characters, for traces."""
    nodes = ",".join(sorted(record.nodes))
    if record.previous is None:
        return f"[{nodes}]"
    return f"[{','.join(sorted(record.previous))}] -> [{nodes}]"
