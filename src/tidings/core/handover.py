"""The ring's transitions and the hand-over of channels between owners (docs/modes/hashing.md,
"Scaling without loss"). Pure: the decisions every node makes, the same in the server and
in the deterministic simulation that checks them (tests/simulation).

Theory of operation
-------------------
The ring is one record, changed only by compare-and-swap (etcd): its ``version``, its
``nodes`` and, while it is *in transition*, the ``previous`` nodes it is moving from.
For a routing key ``k`` the *old* owner is its owner among ``previous`` and the *new*
owner its owner among ``nodes``; ``k`` *moves* when they differ.

* A planned join or leave starts a transition, and only from a settled ring: the
  record's ``previous`` becomes its ``nodes``, ``nodes`` gains or loses the node.
* During the transition the old owner of a moving key is its only *sequencer*: it
  assigns offsets and keeps serving its subscribers, and sends a snapshot of the key's
  channels (epoch, top offset, retained history) and then every publication it makes
  in them to the new owner, which keeps a *replica* by the catch-up rule
  (``decide_replica``). Once the new owner holds a channel's replica it serves that
  channel's subscribers too, and the old owner moves its clients there gradually.
* When a giver has handed everything over it *seals*: publications of its moving keys
  wait (``Hold``) until the ring is final; it waits until every receiver holds its
  channels up to their top, then marks itself *handed* in etcd.
* When every live node of ``previous`` has handed, any node writes the *final* record
  (``previous`` cleared): the new owners sequence, continuing the old owners' epochs
  and offsets, so a client that moved resumes with nothing lost and nothing repeated.
* A crash cannot wait for anyone: the dead node leaves ``nodes`` and ``previous`` at
  once, in or out of a transition. Its keys go to their next owners, which hold no
  replica they can trust (the dead giver may have acknowledged publications it never
  sent on), so they start a new epoch: resuming clients hear ``recovered: false``.

Why no two nodes ever sequence one key: a node sequences ``k`` only if it is ``k``'s
old owner (in transition, until it seals) or its owner (settled); records are totally
ordered by version; the final record is written only after every live old owner has
sealed; and a node that cannot renew its lease stops sequencing before the others can
take its keys (docs/modes/hashing.md, "Failures").
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from tidings.core.catchup import CatchUp, decide_catch_up
from tidings.core.publication import Position
from tidings.core.ring import Ownership


class TransitionUnderWay(Exception):
    """A planned change was asked of a ring in transition: wait for it to be final."""


@dataclass(frozen=True, slots=True)
class RingRecord:
    """One version of the ring: its nodes (id to base URL) and, in transition, the nodes
    it moves from. Version 0 is the empty ring before any node joined."""

    version: int = 0
    nodes: Mapping[str, str] = field(default_factory=dict)
    previous: Mapping[str, str] | None = None

    @property
    def in_transition(self) -> bool:
        """Whether keys are being handed over from ``previous`` to ``nodes``."""
        return self.previous is not None

    def joined(self, node_id: str, url: str) -> RingRecord:
        """The next version with ``node_id`` at ``url``: a transition, unless nothing
        can move (no node before). ``self`` if it is already there at that URL.

        Raises:
            TransitionUnderWay: the ring is in transition.
        """
        if self.nodes.get(node_id) == url:
            return self
        self._settled()
        return self._changed({**self.nodes, node_id: url})

    def left(self, node_id: str) -> RingRecord:
        """The next version without ``node_id`` (a planned leave: it hands its keys
        over); ``self`` if it is not there.

        Raises:
            TransitionUnderWay: the ring is in transition.
        """
        if node_id not in self.nodes:
            return self
        self._settled()
        return self._changed({n: u for n, u in self.nodes.items() if n != node_id})

    def crashed(self, node_id: str) -> RingRecord:
        """The next version without ``node_id`` in ``nodes`` or ``previous``, in or out
        of a transition (a dead node hands nothing over); ``self`` if it is in neither."""
        previous = self.previous
        if node_id not in self.nodes and (previous is None or node_id not in previous):
            return self
        nodes = {n: u for n, u in self.nodes.items() if n != node_id}
        if previous is not None:
            previous = {n: u for n, u in previous.items() if n != node_id}
            if not previous or not nodes or previous.keys() == nodes.keys():
                previous = None  # nothing is left to hand over
        return RingRecord(self.version + 1, nodes, previous)

    def finalized(self) -> RingRecord:
        """The next version, settled on ``nodes``; ``self`` if it is settled."""
        if self.previous is None:
            return self
        return RingRecord(self.version + 1, self.nodes, None)

    def _settled(self) -> None:
        if self.previous is not None:
            raise TransitionUnderWay(
                f"ring version {self.version} is handing keys over; wait until it is final"
            )

    def _changed(self, nodes: Mapping[str, str]) -> RingRecord:
        # A first node, or a last one leaving, has no one to hand keys to or take them from.
        previous = dict(self.nodes) if self.nodes and nodes else None
        return RingRecord(self.version + 1, nodes, previous)


def finalizable(record: RingRecord, live_members: Collection[str], handed: Collection[str]) -> bool:
    """Whether ``record``'s transition may be made final: every node of ``previous``
    that is still a live member has handed (marked itself so for this version)."""
    previous = record.previous
    if previous is None:
        return False
    return all(node in handed for node in previous if node in live_members)


@dataclass(frozen=True, slots=True)
class Transition:
    """The ownerships of a record: ``current`` over its nodes, ``previous`` over the
    nodes it moves from (``None`` when settled)."""

    current: Ownership
    previous: Ownership | None = None

    def old_owner(self, key: str) -> str:
        """The key's sequencer until the ring is final: its owner among ``previous``."""
        return (self.previous or self.current).owner(key)

    def new_owner(self, key: str) -> str:
        """The key's owner once the ring is final."""
        return self.current.owner(key)

    def moves(self, key: str) -> bool:
        """Whether ``key`` changes owner in this transition."""
        return self.previous is not None and self.old_owner(key) != self.new_owner(key)


@dataclass(frozen=True, slots=True)
class Sequence:
    """This node assigns the key's offsets; with ``copy_to``, it also sends each
    publication to that node, the key's new owner (after a snapshot)."""

    copy_to: str | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    """This node sealed the key (handed it over): its publications wait for the final
    ring, then go to the new owner."""


@dataclass(frozen=True, slots=True)
class ForwardTo:
    """Another node sequences the key: send its publications there."""

    node: str


Role = Sequence | Hold | ForwardTo


def publishing_role(transition: Transition, node_id: str, key: str, *, sealed: bool) -> Role:
    """What node ``node_id`` does with a publication of ``key``; ``sealed``: whether it
    has sealed in this transition (meaningless when settled)."""
    old = transition.old_owner(key)
    if old != node_id:
        return ForwardTo(old)
    new = transition.new_owner(key)
    if new == node_id:
        return Sequence()
    return Hold() if sealed else Sequence(copy_to=new)


def serving_node(transition: Transition, node_id: str, key: str, *, holds_replica: bool) -> str:
    """The node that serves subscriptions and history of ``key`` for a client at node
    ``node_id``: ``node_id`` itself if it may, else where to send the client.

    The old owner serves until the ring is final (it moves its clients once the new
    owner holds the replica); the new owner serves once it holds the replica; any
    other node sends clients to the old owner, which surely can serve them.
    """
    old = transition.old_owner(key)
    if old == node_id:
        return node_id
    if transition.new_owner(key) == node_id and (holds_replica or not transition.moves(key)):
        return node_id
    return old


class ReplicaStep(enum.Enum):
    """What a new owner does with a hand-over message for one channel."""

    APPLY = "apply"
    """Store the message's publications after the held offset (in the held epoch), or all
    of them (a snapshot of another epoch, or the first one)."""
    IGNORE = "ignore"
    """Everything in it is held already (a late or repeated message)."""
    RESYNC = "resync"
    """It does not follow what is held: ask the old owner for a fresh snapshot."""


def decide_replica(
    held: Position | None, first: Position, top: int, *, snapshot: bool
) -> ReplicaStep:
    """Judge a hand-over message against the replica ``held`` (``None``: nothing yet).

    Args:
        held: the position of the last publication the replica holds.
        first: the position of the message's first publication; for a snapshot of a
            channel with no retained publication, ``(epoch, top + 1)``.
        top: the offset of the message's last publication (a snapshot: the channel's
            top offset at the old owner, even if history retains none).
        snapshot: whether the message is a snapshot (the old owner's whole state of
            the channel) rather than the next publications of its stream.
    """
    if snapshot:
        if held is None or held.epoch != first.epoch:
            return ReplicaStep.APPLY  # a snapshot replaces what another epoch held
        return ReplicaStep.APPLY if top > held.offset else ReplicaStep.IGNORE
    if held is None:
        # A stream without a snapshot first is whole only from the channel's beginning.
        return ReplicaStep.APPLY if first.offset == 1 else ReplicaStep.RESYNC
    match decide_catch_up(held, first):
        case CatchUp.DELIVER:
            return ReplicaStep.APPLY
        case CatchUp.ALREADY_HAD:
            same_epoch = first.epoch == held.epoch
            return ReplicaStep.APPLY if same_epoch and top > held.offset else ReplicaStep.IGNORE
        case CatchUp.HOLE | CatchUp.GAP:
            return ReplicaStep.RESYNC


def handed_over(tops: Mapping[str, Position], acked: Mapping[str, Position]) -> bool:
    """Whether every channel a giver sealed (its ``tops``: the last position it made in
    each) is held by its receiver up to that position (``acked``)."""
    return all(acked.get(channel) == top for channel, top in tops.items())
