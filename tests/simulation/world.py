"""The simulated world: a seeded schedule of events over nodes, etcd, network and clients.

Theory of operation
-------------------
One ``random.Random(seed)`` decides everything: the workload (when each publication,
subscription, join, leave and crash happens) and every delay. Events sit in a heap
ordered by (simulated time, sequence number) and run one at a time, so a seed replays
exactly. Node-to-node messages each take their own random delay (so they reorder) and
are sometimes delivered twice; messages to a node that is gone are lost. The etcd watch
delivers each node every record in order, each after its own delay, as a watch does.
Clients talk to nodes over connections: a publisher's publication goes to a random
node, which forwards it by ``publishing_role``; it is acknowledged only when the
sequencer stored it and its answer arrived, else the publisher retries elsewhere with
the same key. Subscribers follow redirects and moves, and resume with their position.

The run ends when no event is left (or at ``max_time``); the checker then looks at what
every subscriber received.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from tests.simulation.checker import Checker
from tests.simulation.clients import Publisher, Subscriber
from tests.simulation.etcd import SimEtcd
from tests.simulation.flaws import Flaws
from tests.simulation.membership import change_membership, describe, try_finalize
from tests.simulation.messages import NodeMessage, Publish
from tests.simulation.nodes import Node
from tests.simulation.store import SimPublication
from tidings.core.handover import RingRecord, Transition
from tidings.core.publication import Position
from tidings.core.ring import OwnershipKind, ownership_of


@dataclass(frozen=True, slots=True)
class WorldConfig:
    """The size of a world and the ranges its random choices are drawn from (simulated
    time units are milliseconds-ish; only their ratios matter)."""

    nodes: int = 3
    channels: int = 4
    publications: int = 40
    publishers: int = 3
    subscribers: int = 6
    membership_changes: int = 4  # at most this many joins, leaves and crashes
    crash_share: float = 0.4  # of membership changes
    restart_share: float = 0.3  # of crashes: the node restarts, same id, within its lease
    history: int = 8
    placement: OwnershipKind = "ring"  # or "modulo", where most keys move at each change
    vnodes: int = 8
    work_time: float = 600.0
    delay: tuple[float, float] = (1.0, 25.0)
    duplicate: float = 0.1
    answer_loss: float = 0.1  # of sequencers' answers to publishers (they retry)
    loss: float = 0.02  # of node-to-node messages between live nodes (a broken connection)
    watch_delay: tuple[float, float] = (1.0, 40.0)
    lease_ttl: float = 80.0
    handover_timeout: float = 250.0
    resend_after: float = 150.0  # a giver's retransmission of what is not acked yet
    move_spread: float = 30.0
    resume_wait: float = 300.0
    retry_after: float = 120.0
    max_attempts: int = 8
    max_time: float = 20_000.0
    flaws: Flaws = field(default_factory=Flaws)


class World:
    """One seeded run."""

    def __init__(self, seed: int, config: WorldConfig, *, tracing: bool = False) -> None:
        self.seed = seed
        self.config = config
        self.rng = random.Random(seed)
        self.now = 0.0
        self.tracing = tracing
        self.lines: list[str] = []
        self.etcd = SimEtcd()
        self.checker = Checker(self)
        self.nodes: dict[str, Node] = {}
        self.publishers: list[Publisher] = []
        self.subscribers: list[Subscriber] = []
        self.crashes = 0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._sequence = 0
        self._epochs = 0
        self._transitions: dict[int, Transition] = {}
        self._watched: dict[str, float] = {}  # node -> when its last watch event arrives
        self._next_node = config.nodes + 1
        self._leases = 0

    # -- scheduling ------------------------------------------------------------------

    def after(self, delay: float, action: Callable[[], None]) -> None:
        """Run ``action`` ``delay`` from now."""
        self._sequence += 1
        heapq.heappush(self._events, (self.now + delay, self._sequence, action))

    def run(self) -> None:
        """Set up the ring and the workload, and run every event."""
        self._bootstrap()
        self._schedule_workload()
        while self._events and not self.checker.violations:
            time, _, action = heapq.heappop(self._events)
            if time > self.config.max_time:
                break
            self.now = time
            action()
        self.checker.finish()

    def trace(self, text: str, *args: object) -> None:
        """Record a line of the trace (only when tracing: a failing seed is rerun so)."""
        if self.tracing:
            self.lines.append(f"{self.now:8.1f}  {text % args}")

    # -- the ring --------------------------------------------------------------------

    def transition_of(self, record: RingRecord) -> Transition:
        """The ownerships of ``record`` (one per version: records are CAS-ordered)."""
        transition = self._transitions.get(record.version)
        if transition is None:
            kind, vnodes = self.config.placement, self.config.vnodes
            current = ownership_of(kind, record.nodes or ["-"], vnodes)
            previous = (
                None if record.previous is None else ownership_of(kind, record.previous, vnodes)
            )
            transition = Transition(current, previous)
            self._transitions[record.version] = transition
        return transition

    def new_epoch(self, node: str) -> str:
        """A fresh epoch, made by ``node``."""
        self._epochs += 1
        return f"{node}e{self._epochs}"

    def watch_record(self) -> None:
        """etcd wrote a record: every live node hears of it, in order, after a delay."""
        record = self.etcd.record
        for node in self._live():
            self._watch(node, partial(node.learn, record))

    def watch_handed(self) -> None:
        """A handed key or a member key changed: every live node looks at finalizing."""
        for node in self._live():
            self._watch(node, partial(try_finalize, node))

    def _watch(self, node: Node, action: Callable[[], None]) -> None:
        arrives = max(
            self._watched.get(node.node_id, 0.0), self.now + self._pick(self.config.watch_delay)
        )
        self._watched[node.node_id] = arrives
        self.after(arrives - self.now, action)

    def roles_changed(self) -> None:
        """A node's view, seal or replica changed: check who sequences each channel."""
        self.checker.check_sequencers()

    def exit(self, node: Node) -> None:
        """A node that left the ring stops; its remaining subscribers reconnect."""
        node.alive = False
        for subscriber in node.detach_all():
            self.reconnect(subscriber)
        self._expire(node)

    # -- network ---------------------------------------------------------------------

    def send(self, sender: str, to: str, message: NodeMessage) -> None:
        """A node-to-node message: delayed, so reordered, and sometimes duplicated."""
        draw = self.rng.random()
        if draw < self.config.loss:
            self.trace("network loses %s from %s to %s", type(message).__name__, sender, to)
            return
        copies = 2 if draw > 1 - self.config.duplicate else 1
        for _ in range(copies):
            self.after(self._pick(self.config.delay), lambda: self._arrive(sender, to, message))

    def _arrive(self, sender: str, to: str, message: NodeMessage) -> None:
        node = self.nodes.get(to)
        if node is not None and node.alive:
            node.receive(sender, message)

    def ack_publisher(self, node: str, publish: Publish, position: Position) -> None:
        """The sequencer answers the publisher."""
        publisher = self.publishers[publish.publisher]

        def arrive() -> None:
            before = publisher.acked.get(publish.key)
            if before is None:
                self.trace(
                    "publisher %d: %s acked at %s", publisher.publisher_id, publish.key, position
                )
                publisher.acked[publish.key] = position
                self.checker.acknowledged(publish.channel, publish.key, position)
            elif before != position:
                self.checker.acknowledged_again(publish.key, before, position)

        if self.rng.random() < self.config.answer_loss:
            self.trace(
                "publisher %d's connection drops the answer for %s", publish.publisher, publish.key
            )
            return
        self.after(self._pick(self.config.delay), arrive)

    def deliver(self, subscriber: Subscriber, publication: SimPublication) -> None:
        """A node sends a subscriber a publication (over its connection, in order)."""
        self.trace(
            "subscriber %d <- %s %s",
            subscriber.subscriber_id,
            publication.key,
            publication.position,
        )
        subscriber.receive(publication, self.now)

    def tell_gap(self, subscriber: Subscriber, position: Position, reason: str) -> None:
        """A node tells a subscriber ``recovered: false``."""
        self.trace(
            "subscriber %d told recovered:false (%s), now %s",
            subscriber.subscriber_id,
            reason,
            position,
        )
        subscriber.told_gap(position, reason, self.now)
        self.checker.gap_told(subscriber, reason)

    def move_subscriber(self, subscriber: Subscriber, to: str) -> None:
        """The subscriber is sent to node ``to`` (a redirect or a move) and connects there."""
        subscriber.node = None
        self.after(self._pick(self.config.delay), lambda: self._connect(subscriber, to))

    def reconnect(self, subscriber: Subscriber) -> None:
        """The subscriber's node is gone: it connects to a random live node."""
        subscriber.node = None
        self.after(self._pick(self.config.delay) * 4, lambda: self._connect(subscriber, None))

    def _connect(self, subscriber: Subscriber, to: str | None) -> None:
        node = self.nodes.get(to) if to is not None else self._random_node()
        if node is None or not node.alive:
            self.reconnect(subscriber)
            return
        node.attach(subscriber)

    # -- workload --------------------------------------------------------------------

    def _bootstrap(self) -> None:
        config = self.config
        names = [f"n{index}" for index in range(1, config.nodes + 1)]
        record = RingRecord(1, {name: f"http://{name}" for name in names})
        self.etcd.record = record
        for name in names:
            self.nodes[name] = node = Node(self, name, record, config.flaws)
            self._register(node)
        self.trace("etcd: v1 %s", describe(record))

    def _schedule_workload(self) -> None:
        config, rng = self.config, self.rng
        self.publishers = [Publisher(index) for index in range(config.publishers)]
        for index in range(config.publications):
            publisher = self.publishers[index % config.publishers]
            channel = f"c{rng.randrange(config.channels)}"
            key = f"p{index}"
            publisher.channel_of[key] = channel
            self.after(rng.uniform(0, config.work_time), partial(self._publish, publisher, key))
        for index in range(config.subscribers):
            subscriber = Subscriber(index, f"c{rng.randrange(config.channels)}")
            self.subscribers.append(subscriber)
            start = rng.uniform(0, config.work_time / 3)
            self.after(start, partial(self._connect, subscriber, None))
        for _ in range(rng.randint(0, config.membership_changes)):
            self.after(rng.uniform(0, config.work_time), self._change_membership)

    def _publish(self, publisher: Publisher, key: str) -> None:
        if key in publisher.acked:
            return
        attempts = publisher.attempts.get(key, 0)
        if attempts >= self.config.max_attempts:
            return
        publisher.attempts[key] = attempts + 1
        node = self._random_node()
        if node is not None:
            self.trace(
                "publisher %d: %s to %s (attempt %d)",
                publisher.publisher_id,
                key,
                node.node_id,
                attempts + 1,
            )
            node.publish(Publish(publisher.publisher_id, publisher.channel_of[key], key))
        self.after(self.config.retry_after, lambda: self._publish(publisher, key))

    def _change_membership(self) -> None:
        rng = self.rng
        ring = [node for node in self._live() if node.node_id in self.etcd.record.nodes]
        if rng.random() < self.config.crash_share:
            if len(ring) >= 3:
                # A leaver crashing halfway is the hardest case: prefer it.
                leavers = [node for node in self._live() if node.leaving]
                self._crash(rng.choice(leavers or ring))
            return
        if rng.random() < 0.5 or len(ring) < 3:
            self._join()
            if len(ring) >= 3 and rng.random() < self.config.crash_share:
                # A giver dying during the join's hand-over: its keys go to the next.
                victim = rng.choice(ring)
                self.after(rng.uniform(0, 150), partial(self._crash_if_ring_allows, victim))
        else:
            stayers = [node for node in ring if not (node.leaving or node.joining)]
            if len(stayers) >= 3:
                leaver = rng.choice(stayers)
                leaver.leaving = True
                self.trace("%s is asked to leave", leaver.node_id)
                change_membership(leaver)
                if rng.random() < self.config.crash_share:
                    # Dying halfway through its hand-over is the hardest case.
                    self.after(rng.uniform(0, 150), partial(self._crash_if_alive, leaver))

    def _join(self) -> None:
        name = f"n{self._next_node}"
        self._next_node += 1
        node = Node(self, name, self.etcd.record, self.config.flaws)
        node.joining = True
        self.nodes[name] = node
        self._register(node)
        self.trace("%s starts and joins", name)
        node.begin()

    def _crash_if_alive(self, node: Node) -> None:
        if node.alive:
            self._crash(node)

    def _crash_if_ring_allows(self, node: Node) -> None:
        ring = [other for other in self._live() if other.node_id in self.etcd.record.nodes]
        if node.alive and len(ring) >= 3:
            self._crash(node)

    def _crash(self, node: Node) -> None:
        self.trace("%s CRASHES", node.node_id)
        node.alive = False
        self.crashes += 1
        for subscriber in node.detach_all():
            self.reconnect(subscriber)

        self.after(self.config.lease_ttl, lambda: self._expire(node))
        if self.rng.random() < self.config.restart_share:
            restart = self.rng.uniform(5, self.config.lease_ttl * 0.8)
            self.after(restart, partial(self._restart, node.node_id))

    def _register(self, node: Node) -> None:
        self._leases += 1
        node.lease = self._leases
        self.etcd.members[node.node_id] = node.lease

    def _restart(self, node_id: str) -> None:
        """A crashed node starts again, same id and URL, with nothing in its stores."""
        node = Node(self, node_id, self.etcd.record, self.config.flaws)
        self.nodes[node_id] = node
        self._register(node)  # its member key now hangs on the new lease
        if self.config.flaws.silent_restart:
            node.joining = True
        else:
            node.restarting = True
        self.trace("%s restarts", node_id)
        node.begin()

    def _expire(self, node: Node) -> None:
        """``node``'s lease is gone: a crash removal is written if it is still in the ring
        (unless its member key hangs on a newer incarnation's lease by now)."""
        if self.etcd.members.get(node.node_id, node.lease) != node.lease:
            return
        self.etcd.members.pop(node.node_id, None)
        record = self.etcd.record
        crashed = record.crashed(node.node_id)
        previous = crashed.previous
        if self.config.flaws.settle_on_leaver_crash and previous and previous == crashed.nodes:
            crashed = RingRecord(crashed.version, crashed.nodes)
        if self.etcd.compare_and_swap(record.version, crashed):
            self.trace("etcd: %s's lease expired: v%d %s", node.node_id, self.etcd.record.version,
                       describe(self.etcd.record))  # fmt: skip
            self.watch_record()
        self.watch_handed()

    # -- helpers ---------------------------------------------------------------------

    def _live(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.alive]

    def _random_node(self) -> Node | None:
        live = self._live()
        return self.rng.choice(live) if live else None

    def _pick(self, bounds: tuple[float, float]) -> float:
        return self.rng.uniform(*bounds)
