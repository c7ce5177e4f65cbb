"""The invariants of the hand-over, checked as a simulated world runs and when it ends.

1. **One sequencer**: at no simulated instant do two live nodes both take the role
   ``Sequence`` for one channel, each by its own view of the ring (checked whenever a
   view, a seal or a replica changes).
2. **Delivery**: every publication acknowledged to its publisher reaches every
   subscriber exactly once and in offset order, across moves, unless the subscriber was
   told ``recovered: false`` since, which only a crash may cause. (Each subscriber
   checks order and repeats as it receives; at the end, its last segment must hold every
   acknowledged publication of its epoch after the segment's start.)
3. **Offsets**: no (channel, epoch, offset) is ever assigned to two publications.

And, when no event is left: every transition ended and no node still holds a publication
(liveness), and every subscriber is attached somewhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.simulation.clients import Subscriber
from tests.simulation.store import SimPublication
from tidings.core.handover import Sequence
from tidings.core.publication import Position

if TYPE_CHECKING:
    from tests.simulation.world import World


class Checker:
    """Collects the violations of one world's run (the run stops at the first)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.violations: list[str] = []
        self._assigned: dict[tuple[str, str, int], str] = {}
        self._acknowledged: dict[str, list[tuple[Position, str]]] = {}

    def _violate(self, text: str) -> None:
        self.violations.append(f"t={self.world.now:.1f} {text}")
        self.world.trace("VIOLATION: %s", text)

    def assigned(self, publication: SimPublication, node: str) -> None:
        """A sequencer stored a publication at a position (invariant 3)."""
        slot = (publication.channel, publication.epoch, publication.offset)
        before = self._assigned.setdefault(slot, publication.key)
        if before != publication.key:
            self._violate(
                f"{node} assigned {publication.channel} {publication.position} to "
                f"{publication.key}, already {before}'s"
            )

    def acknowledged(self, channel: str, key: str, position: Position) -> None:
        """A publisher heard its publication is stored at ``position``."""
        self._acknowledged.setdefault(channel, []).append((position, key))

    def acknowledged_again(self, key: str, before: Position, position: Position) -> None:
        """A publisher's retry was acknowledged at another position: stored twice, which
        the dedupe window must prevent within an epoch (a new epoch lost it: allowed)."""
        if before.epoch == position.epoch:
            self._violate(f"{key} stored twice in one epoch: at {before} and {position}")

    def gap_told(self, subscriber: Subscriber, reason: str) -> None:
        """A subscriber was told ``recovered: false``: only a crash may cause it."""
        if self.world.crashes == 0:
            self._violate(
                f"subscriber {subscriber.subscriber_id} ({subscriber.channel}) told "
                f"recovered:false with no crash ({reason})"
            )

    def check_sequencers(self) -> None:
        """Invariant 1, now."""
        world = self.world
        live = [node for node in world.nodes.values() if node.alive]
        for index in range(world.config.channels):
            channel = f"c{index}"
            sequencers = [node.node_id for node in live if isinstance(node.role(channel), Sequence)]
            if len(sequencers) > 1:
                self._violate(f"two sequencers for {channel}: {sequencers}")

    def finish(self) -> None:
        """At the end: subscribers' own findings, then invariant 2's completeness."""
        for subscriber in self.world.subscribers:
            for violation in subscriber.violations:
                self.violations.append(violation)
        if self.violations:
            return
        for subscriber in self.world.subscribers:
            self._check_complete(subscriber)
        self._check_finished()
        for node in self.world.nodes.values():
            for channel, store in node.stores.items():
                if node.alive and not store.is_contiguous():
                    self._violate(f"{node.node_id}'s history of {channel} has a hole")

    def _check_finished(self) -> None:
        """Liveness: every transition ended, and no publication is still held."""
        record = self.world.etcd.record
        if record.in_transition:
            self._violate(f"the ring is still in transition at the end (v{record.version})")
        for node in self.world.nodes.values():
            if node.alive and node.held:
                keys = [publish.key for publish in node.held]
                self._violate(f"{node.node_id} still holds {keys} at the end")

    def _check_complete(self, subscriber: Subscriber) -> None:
        if not subscriber.segments:
            return  # never got to subscribe (its node choices all failed): nothing promised
        if subscriber.node is None:
            self._violate(f"subscriber {subscriber.subscriber_id} is not attached at the end")
            return
        segment = subscriber.segments[-1]
        received = set(segment.keys)
        for position, key in self._acknowledged.get(subscriber.channel, []):
            after_start = position.offset > segment.start.offset
            if position.epoch == segment.start.epoch and after_start and key not in received:
                self._violate(
                    f"subscriber {subscriber.subscriber_id} ({subscriber.channel}) never got "
                    f"{key} (acknowledged at {position}); it holds {subscriber.position}"
                )
