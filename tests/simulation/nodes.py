"""A simulated ring node: its stores, its view of the ring, sequencing, receiving a
hand-over, and serving subscribers.

Every decision of the protocol is the core's (``tidings.core.handover``): who sequences a
publication (``publishing_role``), who serves a subscription (``serving_node``), whether
a hand-over message is applied (``decide_replica``), whether a resuming subscriber waits
for the replica (``decide_resume``), which nodes a new record removed by a crash
(``crashed_nodes``). This module only keeps the state those decisions read and carries
out what they say, as the server does; its other parts have their own modules:

* **Giver** (``giver``; the old owner of moving channels, for one ring version):
  snapshot each moving channel to its receiver, copy every publication it sequences
  there, move the channel's subscribers once the receiver acked the snapshot, seal, and
  mark itself handed once every receiver acked its top.
* **Receiver** (here, storing by ``replica``): keep a replica by ``decide_replica``
  (apply, ignore, or ask for a resync), ack the position it holds, serve subscribers
  from it.
* **Crash** (here): on a record that removed a crashed node, forget every channel that
  node sequenced (a copy may lack what it acknowledged), so the next sequencer starts a
  new epoch and resuming subscribers hear ``recovered: false``.
* **Membership** (``membership``): join, leave, report its own previous incarnation's
  crash after a restart, and make a transition final.

``Flaws`` (``flaws``) turn on deliberately broken variants, to show the checker catches
them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tests.simulation.clients import Subscriber
from tests.simulation.flaws import Flaws
from tests.simulation.giver import Giver
from tests.simulation.membership import change_membership, describe, try_finalize
from tests.simulation.messages import NodeMessage, Publish, Replica, ReplicaAck, Resync
from tests.simulation.replica import apply_replica
from tests.simulation.store import ChannelStore, SimPublication
from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.handover import (
    ForwardTo,
    Hold,
    ReplicaStep,
    ResumeStep,
    RingRecord,
    Role,
    Sequence,
    Transition,
    crashed_nodes,
    decide_replica,
    decide_resume,
    publishing_role,
    serving_node,
)
from tidings.core.publication import Position
from tidings.core.recovery import Gap

if TYPE_CHECKING:
    from tests.simulation.world import World

MAX_HOPS = 6  # a publication forwarded more often is dropped; its publisher retries


class Node:
    """One simulated tidings node of the ring."""

    def __init__(self, world: World, node_id: str, view: RingRecord, flaws: Flaws) -> None:
        self.world = world
        self.node_id = node_id
        self.flaws = flaws
        self.alive = True
        self.lease = 0  # the etcd lease of this incarnation
        self.restarting = False  # restarted while its id is still in the ring
        self.joining = False
        self.leaving = False
        self.view = view
        self.transition = world.transition_of(view)
        self.stores: dict[str, ChannelStore] = {}
        self.subscribers: dict[str, dict[int, Subscriber]] = {}
        self.replicas: dict[str, str] = {}  # channel -> the giver its replica came from
        self.giver: Giver | None = None
        self.held: list[Publish] = []
        # Subscribers waiting for the replica to reach their position (decide_resume).
        self.waiting: dict[int, Subscriber] = {}
        self._wait_ids: dict[int, object] = {}  # which wait of each is current

    # -- roles -----------------------------------------------------------------------

    def role(self, channel: str) -> Role:
        """What this node does with a publication of ``channel`` now."""
        if self.restarting:
            return Hold()  # not serving until its old incarnation is removed
        transition = self.transition
        if (
            self.flaws.eager_receiver
            and transition.moves(channel)
            and transition.new_owner(channel) == self.node_id
            and channel in self.replicas
        ):
            return Sequence()
        sealed = self.giver is not None and self.giver.sealed
        return publishing_role(transition, self.node_id, channel, sealed=sealed)

    def serving(self, channel: str) -> str:
        """Who serves subscribers of ``channel`` for a client at this node."""
        holds = channel in self.replicas
        return serving_node(self.transition, self.node_id, channel, holds_replica=holds)

    # -- the ring --------------------------------------------------------------------

    def learn(self, record: RingRecord) -> None:
        """The watch delivers the next version of the ring."""
        if not self.alive or record.version <= self.view.version:
            return
        before, before_transition = self.view, self.transition
        self.view, self.transition = record, self.world.transition_of(record)
        self.world.trace("%s learns v%d %s", self.node_id, record.version, describe(record))
        for dead in crashed_nodes(before, record):
            self._forget_channels_of(dead, before_transition)
        self._keep_replicas()
        self._start_giving()
        self._redispatch_held()
        self._redirect_subscribers()
        self._reattach_waiting()
        change_membership(self)
        try_finalize(self)
        self.world.roles_changed()

    def begin(self) -> None:
        """A node that starts acts on the ring it read (as on each one it learns)."""
        self._start_giving()
        change_membership(self)
        try_finalize(self)
        self.world.roles_changed()

    def _forget_channels_of(self, dead: str, before: Transition) -> None:
        for channel in list(self.stores):
            if before.old_owner(channel) != dead or self.flaws.keep_store_on_crash:
                continue
            source = self.replicas.get(channel)
            if source is not None and source != dead and not self.flaws.forget_every_copy_on_crash:
                continue  # a replica the next giver began (its message came before the record)
            del self.stores[channel]
            self.replicas.pop(channel, None)
            self.world.trace(
                "%s forgets %s (its sequencer %s crashed)", self.node_id, channel, dead
            )
            for subscriber in list(self.subscribers.pop(channel, {}).values()):
                self.world.move_subscriber(subscriber, self.serving(channel))

    def _keep_replicas(self) -> None:
        transition = self.transition
        for channel, giver in list(self.replicas.items()):
            if (
                not transition.moves(channel)
                or transition.old_owner(channel) != giver
                or transition.new_owner(channel) != self.node_id
            ):
                del self.replicas[channel]

    def _start_giving(self) -> None:
        previous = self.view.previous
        if previous is None or self.node_id not in previous or self.restarting:
            self.giver = None
            return
        transition = self.transition
        moving = {}
        for channel in self.stores:
            if transition.old_owner(channel) == self.node_id:
                receiver = transition.new_owner(channel)
                if receiver != self.node_id:
                    moving[channel] = receiver
        self.giver = Giver(self, self.view.version, moving)
        self.giver.start()

    def _redispatch_held(self) -> None:
        held, self.held = self.held, []
        for publish in held:
            self.publish(publish)

    def _redirect_subscribers(self) -> None:
        for channel, subscribers in self.subscribers.items():
            target = self.serving(channel)
            if target == self.node_id:
                continue
            for subscriber in list(subscribers.values()):
                del subscribers[subscriber.subscriber_id]
                self.world.move_subscriber(subscriber, target)

    def _reattach_waiting(self, channel: str | None = None) -> None:
        """Look again at waiting subscribers: all (a new ring), or those of ``channel``
        whose position its replica now reached."""
        for subscriber in list(self.waiting.values()):
            if channel is not None:
                store = self.stores.get(channel)
                since = subscriber.position
                if subscriber.channel != channel or store is None or since is None:
                    continue
                if decide_resume(store.position, since, replica=True) is ResumeStep.WAIT:
                    continue
            del self.waiting[subscriber.subscriber_id]
            self.attach(subscriber, waited=channel is not None)

    # -- publications ----------------------------------------------------------------

    def publish(self, publish: Publish) -> None:
        """A publication arrives from a publisher or another node."""
        if self.restarting:
            return  # not serving yet: its publisher retries
        role = self.role(publish.channel)
        match role:
            case Sequence(copy_to=copy_to):
                self._sequence(publish, copy_to)
            case Hold():
                self.held.append(publish)
            case ForwardTo(node=node):
                if publish.hops >= MAX_HOPS:
                    self.world.trace(
                        "%s drops %s after %d hops", self.node_id, publish.key, MAX_HOPS
                    )
                    return
                forwarded = Publish(
                    publish.publisher, publish.channel, publish.key, publish.hops + 1
                )
                self.world.send(self.node_id, node, forwarded)

    def _sequence(self, publish: Publish, copy_to: str | None) -> None:
        channel = publish.channel
        store = self.stores.get(channel) or self._create_store(channel)
        known = store.keys.get(publish.key)
        if known is not None:  # a retry: answer with where it was stored
            self.world.ack_publisher(self.node_id, publish, known)
            return
        publication = store.append(channel, publish.key)
        self.world.checker.assigned(publication, self.node_id)
        self.world.trace("%s sequences %s at %s", self.node_id, publish.key, publication.position)
        self._fan_out(channel, (publication,))
        if copy_to is not None and self.giver is not None:
            self.giver.copy(copy_to, publication)
        self.world.ack_publisher(self.node_id, publish, publication.position)

    def _create_store(self, channel: str) -> ChannelStore:
        store = ChannelStore(self.world.new_epoch(self.node_id), self.world.config.history)
        self.stores[channel] = store
        giver = self.giver
        transition = self.transition
        if giver is not None and transition.old_owner(channel) == self.node_id:
            receiver = transition.new_owner(channel)
            if receiver != self.node_id:  # a channel first made in a transition moves too
                giver.add(channel, receiver)
        return store

    # -- the receiver ----------------------------------------------------------------

    def receive(self, sender: str, message: NodeMessage) -> None:
        """A message from another node arrives."""
        if self.restarting and not isinstance(message, Publish):
            return  # meant for its previous incarnation
        match message:
            case Publish():
                self.publish(message)
            case Replica():
                self._replica(sender, message)
            case ReplicaAck():
                if self.giver is not None:
                    self.giver.receive_ack(sender, message)
            case Resync(channel=channel):
                giver = self.giver
                if giver is not None and giver.moving.get(channel) == sender:
                    giver.send_snapshot(channel)

    def _replica(self, sender: str, message: Replica) -> None:
        channel, view = message.channel, self.view
        members = set(view.nodes).union(view.previous or ())
        from_giver = self.transition.old_owner(channel) == sender
        if sender not in members or not (from_giver or view.version < message.version):
            return  # from a node this one knows crashed, or no longer the sequencer
        if self.transition.old_owner(channel) == self.node_id:
            return  # this node sequences the channel: a late message of a past hand-over
        store = self.stores.get(channel)
        held = store.position if store is not None else None
        step = decide_replica(held, message.first, message.top, snapshot=message.snapshot)
        self.world.trace("%s replica %s from %s: %s %s..%d -> %s", self.node_id, channel, sender,
                         "snapshot" if message.snapshot else "stream", message.first, message.top,
                         step.value)  # fmt: skip
        if step is ReplicaStep.RESYNC and not self.flaws.ignore_resync:
            self.send(sender, Resync(channel))
            return
        if step is not ReplicaStep.IGNORE:
            history, force = self.world.config.history, self.flaws.ignore_resync
            store, stored = apply_replica(store, message, history, force=force)
            self.stores[channel] = store
            self._fan_out(channel, stored)
        store = self.stores.get(channel)
        if store is None:
            return
        if store.epoch == message.epoch:
            self.replicas[channel] = sender
            for key, position in message.keys:
                store.keys.setdefault(key, position)
        self.send(sender, ReplicaAck(channel, store.position))
        self._reattach_waiting(channel)

    # -- subscribers -----------------------------------------------------------------

    def attach(self, subscriber: Subscriber, *, waited: bool = False) -> None:
        """A subscriber connects (new, or resuming from its position); ``waited``: it
        waited here for the replica already."""
        if self.restarting:
            self.world.reconnect(subscriber)  # not serving yet
            return
        channel = subscriber.channel
        target = self.serving(channel)
        giver = self.giver
        begins = target == self.node_id and channel not in self.stores
        handed = giver is not None and giver.handed and not self.flaws.begin_after_handed
        if begins and handed and self.transition.moves(channel):
            # Handed: a channel begun now would be left out of the hand-over.
            target = self.transition.new_owner(channel)
        if target != self.node_id:
            self.world.move_subscriber(subscriber, target)
            return
        store = self.stores.get(channel) or self._create_store(channel)
        since = subscriber.position
        if since is not None and not waited and not self.flaws.no_resume_wait:
            step = decide_resume(store.position, since, replica=channel in self.replicas)
            if step is ResumeStep.WAIT:
                self.world.trace("subscriber %d waits at %s for %s (holds %s)",
                                 subscriber.subscriber_id, self.node_id, since,
                                 store.position)  # fmt: skip
                self.waiting[subscriber.subscriber_id] = subscriber
                wait = self._wait_ids[subscriber.subscriber_id] = object()
                self.world.after(
                    self.world.config.resume_wait, lambda: self._stop_waiting(subscriber, wait)
                )
                return
        self.world.trace("subscriber %d attaches at %s to %s (since %s, top %s)",
                         subscriber.subscriber_id, self.node_id, channel, subscriber.position,
                         store.position)  # fmt: skip
        subscriber.node = self.node_id
        if subscriber.position is None:
            subscriber.start(store.position)
        else:
            self._resume(subscriber, store, subscriber.position)
        self.subscribers.setdefault(channel, {})[subscriber.subscriber_id] = subscriber
        giver = self.giver
        if giver is not None and channel in giver.snapshot_acked:
            giver.schedule_move(subscriber)

    def _stop_waiting(self, subscriber: Subscriber, wait: object) -> None:
        # Only this wait's end: the subscriber may have left and come to wait again.
        subscriber_id = subscriber.subscriber_id
        if self.alive and subscriber_id in self.waiting and self._wait_ids[subscriber_id] is wait:
            store = self.stores.get(subscriber.channel)
            since = subscriber.position
            if (
                not self.flaws.answer_after_resume_wait
                and store is not None
                and since is not None
                and subscriber.channel in self.replicas
                and decide_resume(store.position, since, replica=True) is ResumeStep.WAIT
            ):
                # The copy has not come (its messages lost, resent later): the node
                # refuses (``unavailable``) and the client retries with its position,
                # never told recovered: false with no crash (server.handover_broker).
                self.world.trace("subscriber %d retries at %s for %s (holds %s)",
                                 subscriber_id, self.node_id, since, store.position)  # fmt: skip
                retry = self._wait_ids[subscriber_id] = object()
                self.world.after(
                    self.world.config.resume_wait, lambda: self._stop_waiting(subscriber, retry)
                )
                return
            del self.waiting[subscriber_id]
            self.attach(subscriber, waited=True)

    def detach_all(self) -> list[Subscriber]:
        """Every subscriber attached or waiting here (the node crashed or exits)."""
        subscribers = [s for by_id in self.subscribers.values() for s in by_id.values()]
        subscribers += self.waiting.values()
        self.subscribers.clear()
        self.waiting.clear()
        return subscribers

    def _resume(self, subscriber: Subscriber, store: ChannelStore, since: Position) -> None:
        recovery = store.recover(since)
        if isinstance(recovery, Gap):
            self.world.tell_gap(
                subscriber, store.position, f"{self.node_id}: {recovery.reason.name}"
            )
            return
        for publication in recovery.publications:
            key = publication.key or ""
            sim = SimPublication(subscriber.channel, publication.epoch, publication.offset, key)
            self.world.deliver(subscriber, sim)

    def _fan_out(self, channel: str, publications: Iterable[SimPublication]) -> None:
        subscribers = self.subscribers.get(channel)
        if not subscribers:
            return
        store = self.stores[channel]
        for publication in publications:
            for subscriber in list(subscribers.values()):
                self._feed(subscriber, store, publication)

    def _feed(
        self, subscriber: Subscriber, store: ChannelStore, publication: SimPublication
    ) -> None:
        # The hub's per-subscription catch-up rule.
        assert subscriber.position is not None
        match decide_catch_up(subscriber.position, publication.position):
            case CatchUp.DELIVER:
                self.world.deliver(subscriber, publication)
            case CatchUp.ALREADY_HAD:
                pass
            case CatchUp.HOLE:
                self._resume(subscriber, store, subscriber.position)
            case CatchUp.GAP:
                self.world.tell_gap(subscriber, store.position, f"{self.node_id}: epoch changed")

    def send(self, to: str, message: NodeMessage) -> None:
        """Send ``message`` to node ``to`` over the simulated network."""
        self.world.send(self.node_id, to, message)
