"""Deliberately broken variants of the simulated node, to show the checker catches them.

Each flag breaks one rule of the protocol (all off: the protocol as specified); the
nodes (``nodes``, ``giver``) and the world (``world``) read them. Each flaw
``test_simulation`` tests must fail some seed there.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Flaws:
    """Deliberately broken variants of the node (all off: the protocol as specified)."""

    eager_receiver: bool = False
    """The new owner sequences a channel as soon as it holds its replica, not at the
    final ring."""
    ignore_resync: bool = False
    """The receiver applies a hand-over message that does not follow its replica."""
    no_resume_wait: bool = False
    """A receiver answers a subscriber whose position is ahead of its replica at once
    (the recovery rule: ``recovered: false``), as the protocol's first draft had it,
    instead of waiting for the stream (``decide_resume``)."""
    answer_after_resume_wait: bool = False
    """A receiver whose replica has not reached a waiting subscriber's position when the
    wait ends answers it anyway (``recovered: false``), instead of refusing it to retry
    with its position (the server's ``unavailable``): wrong when the giver's messages
    were only lost, and resent later."""
    begin_after_handed: bool = False
    """A giver that has handed over still begins a moving channel for a new subscriber
    (a new epoch the hand-over leaves out: the new owner begins another)."""
    no_resend: bool = False
    """A giver never sends a snapshot again on its own: a lost message (or ack) leaves
    the receiver behind, and the transition never ends."""
    silent_restart: bool = False
    """A node that restarts (same id and URL) before its old lease expired just takes its
    place again (``joined`` changes nothing), so no one learns it crashed."""
    retained_keys_only: bool = False
    """A snapshot carries only the keys of its retained publications (the protocol's first draft's
    ``adopt``), not the giver's dedupe window: a retry of an evicted publication is
    stored again by the new owner."""
    settle_on_leaver_crash: bool = False
    """etcd settles the ring when a planned leaver's crash leaves nothing to move (as
    ``RingRecord.crashed`` first did): the record equals the final one."""
    forget_every_copy_on_crash: bool = False
    """A crash makes a node forget every copy of the dead node's channels, even a replica
    the next giver began before the node learned of the crash (the giver then counts an
    ack of a position the receiver no longer holds)."""
    keep_store_on_crash: bool = False
    """A crash does not make the next sequencer forget its copy of the dead node's
    channels (it continues the old epoch)."""
