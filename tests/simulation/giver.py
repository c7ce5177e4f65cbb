"""A giver: a node's hand-over of its moving channels in one ring version.

The old owner of channels that move in a transition is their giver for that ring
version. It snapshots each moving channel to its receiver (again on its own every
``resend_after`` while the receiver has not acked the top: a message or its ack may be
lost), copies there every publication its node sequences, moves the channel's
subscribers once the receiver acked the snapshot, seals (publications of its moving
channels then hold: ``publishing_role``), and marks itself handed in etcd once every
receiver acked its top (``handed_over``). A giver no one acked in time seals anyway
(``handover_timeout``).

The giver keeps the hand-over's own state; the stores and subscribers are its node's. A
giver acts only while it is its node's current one: a newer ring version replaces it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.simulation.clients import Subscriber
from tests.simulation.messages import Replica, ReplicaAck
from tests.simulation.store import SimPublication
from tidings.core.handover import handed_over
from tidings.core.publication import Position

if TYPE_CHECKING:
    from tests.simulation.nodes import Node


class Giver:
    """A node's hand-over of its moving channels in one ring version."""

    __slots__ = ("acked", "handed", "moving", "node", "sealed", "snapshot_acked", "version")

    def __init__(self, node: Node, version: int, moving: dict[str, str]) -> None:
        self.node = node
        self.version = version
        self.moving = moving  # channel -> receiver
        self.acked: dict[str, Position] = {}
        self.snapshot_acked: set[str] = set()
        self.sealed = False
        self.handed = False

    def start(self) -> None:
        """Send every moving channel's snapshot; arm the seal's timeout and the resends."""
        world = self.node.world
        for channel in self.moving:
            self.send_snapshot(channel)
        world.after(world.config.handover_timeout, self._seal_by_timeout)
        if not self.node.flaws.no_resend:
            world.after(world.config.resend_after, self._resend)
        self.progress()

    def add(self, channel: str, receiver: str) -> None:
        """A channel first made during the transition moves too."""
        self.moving[channel] = receiver
        self.send_snapshot(channel)

    def send_snapshot(self, channel: str) -> None:
        """Send ``channel``'s whole state to its receiver (a resync asks for it too)."""
        node = self.node
        store = node.stores.get(channel)
        if store is None or channel not in self.moving:
            return
        keys = () if node.flaws.retained_keys_only else tuple(store.keys.items())
        snapshot = Replica(self.version, channel, store.epoch, store.top,
                           tuple(store.retained), snapshot=True, keys=keys)  # fmt: skip
        node.send(self.moving[channel], snapshot)

    def copy(self, receiver: str, publication: SimPublication) -> None:
        """Send a publication its node just sequenced to the channel's receiver."""
        channel, epoch, offset = publication.channel, publication.epoch, publication.offset
        stream = Replica(self.version, channel, epoch, offset, (publication,), snapshot=False)
        self.node.send(receiver, stream)

    def receive_ack(self, sender: str, ack: ReplicaAck) -> None:
        """A receiver acked the position it holds: the first ack of a channel's snapshot
        starts moving its subscribers."""
        node, channel = self.node, ack.channel
        store = node.stores.get(channel)
        if self.moving.get(channel) != sender or store is None:
            return
        if ack.held.epoch != store.epoch:
            return
        before = self.acked.get(channel)
        if before is None or ack.held.offset > before.offset:
            self.acked[channel] = ack.held
        if channel not in self.snapshot_acked:
            self.snapshot_acked.add(channel)
            for subscriber in node.subscribers.get(channel, {}).values():
                self.schedule_move(subscriber)
        self.progress()

    def schedule_move(self, subscriber: Subscriber) -> None:
        """Move ``subscriber`` to the receiver after a random spread (not all at once)."""
        world = self.node.world
        delay = world.rng.uniform(0, world.config.move_spread)
        world.after(delay, lambda: self._move(subscriber))

    def progress(self) -> None:
        """Seal once every moving channel's snapshot is acked and its subscribers moved;
        once sealed, mark handed when every receiver acked the top."""
        node = self.node
        if self.handed:
            return
        if not self.sealed:
            moved = all(
                channel in self.snapshot_acked and not node.subscribers.get(channel)
                for channel in self.moving
            )
            if moved:
                self._seal()
            return
        tops = {channel: node.stores[channel].position for channel in self.moving}
        if handed_over(tops, self.acked):
            self.handed = True
            node.world.trace("%s handed v%d", node.node_id, self.version)
            node.world.etcd.mark_handed(self.version, node.node_id)
            node.world.watch_handed()

    def _is_current(self) -> bool:
        return self.node.alive and self.node.giver is self

    def _resend(self) -> None:
        # A message or its ack may be lost (a connection broke): send a fresh snapshot of
        # every channel its receiver has not acked up to the top, until handed.
        if not self._is_current() or self.handed:
            return
        for channel in self.moving:
            if self.acked.get(channel) != self.node.stores[channel].position:
                self.send_snapshot(channel)
        world = self.node.world
        world.after(world.config.resend_after, self._resend)

    def _move(self, subscriber: Subscriber) -> None:
        node, channel = self.node, subscriber.channel
        if not self._is_current() or channel not in self.moving:
            return
        if node.subscribers.get(channel, {}).pop(subscriber.subscriber_id, None) is None:
            return
        node.world.trace("%s moves subscriber %d", node.node_id, subscriber.subscriber_id)
        node.world.move_subscriber(subscriber, self.moving[channel])
        self.progress()

    def _seal_by_timeout(self) -> None:
        if self._is_current() and not self.sealed:
            self._seal()

    def _seal(self) -> None:
        self.sealed = True
        self.node.world.trace("%s seals v%d", self.node.node_id, self.version)
        self.node.world.roles_changed()
        self.progress()
