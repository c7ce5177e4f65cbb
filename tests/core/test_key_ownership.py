"""The bookkeeping of an application's keys (core/key_ownership.py): gained and lost
alternate for each key, a pinned or subscribed key is never lost for idleness, a new
ring loses exactly the held keys it gives elsewhere, released keys are not gained again
before the next ring, and the records stay as many as the keys in use."""

from __future__ import annotations

from functools import partial
from typing import Final

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from tidings.core.handover import Transition
from tidings.core.key_ownership import Entry, HeldKeys, KeyPhase
from tidings.core.ring import HashRing

IDLE_MS: Final = 100
KEYS: Final = ("doc:1", "doc:2", "user:3")


def test_a_first_request_gains_a_key_and_the_next_go_straight_on() -> None:
    book = HeldKeys(IDLE_MS)
    assert book.enter("doc:1", owned=True, now_ms=0) is Entry.GAIN
    assert book.enter("doc:1", owned=True, now_ms=1) is Entry.WAIT
    assert book.gained("doc:1", ok=True, owned=True, now_ms=2) is KeyPhase.HELD
    assert book.enter("doc:1", owned=True, now_ms=3) is Entry.GO
    assert book.held() == ["doc:1"]


def test_a_key_owned_elsewhere_is_not_gained() -> None:
    book = HeldKeys(IDLE_MS)
    assert book.enter("doc:1", owned=False, now_ms=0) is Entry.ELSEWHERE
    assert len(book) == 0


def test_a_failed_gain_leaves_the_key_not_gained_and_the_next_request_tries_again() -> None:
    book = HeldKeys(IDLE_MS)
    book.enter("doc:1", owned=True, now_ms=0)
    assert book.gained("doc:1", ok=False, owned=True, now_ms=1) is None
    assert len(book) == 0
    assert book.enter("doc:1", owned=True, now_ms=2) is Entry.GAIN


def test_a_key_gained_while_the_ring_gave_it_away_is_lost_at_once() -> None:
    book = HeldKeys(IDLE_MS)
    book.enter("doc:1", owned=True, now_ms=0)
    assert book.disowned(lambda key: False) == []  # gaining: decided when it reports
    assert book.gained("doc:1", ok=True, owned=False, now_ms=1) is KeyPhase.LOSING
    assert book.may_lose("doc:1")


def test_an_idle_key_expires_but_not_one_with_a_subscriber_or_a_hold() -> None:
    book = HeldKeys(IDLE_MS)
    for key in KEYS:
        book.enter(key, owned=True, now_ms=0)
        book.gained(key, ok=True, owned=True, now_ms=0)
    book.subscribed("doc:2")
    assert book.enter("user:3", owned=True, now_ms=0, pin=True) is Entry.GO
    assert book.expired(IDLE_MS - 1) == []
    assert book.expired(IDLE_MS) == ["doc:1"]
    book.unsubscribed("doc:2", now_ms=IDLE_MS)
    assert book.expired(2 * IDLE_MS - 1) == []
    assert book.expired(2 * IDLE_MS) == ["doc:2"]
    assert not book.unpin("user:3", 2 * IDLE_MS)
    assert book.expired(3 * IDLE_MS) == ["user:3"]


def test_a_lost_waits_for_the_holds_and_the_holder_may_still_publish() -> None:
    book = HeldKeys(IDLE_MS)
    book.enter("doc:1", owned=True, now_ms=0)
    book.gained("doc:1", ok=True, owned=True, now_ms=0)
    assert book.enter("doc:1", owned=True, now_ms=0, pin=True) is Entry.GO
    assert book.release(["doc:1"]) == ["doc:1"]
    assert not book.may_lose("doc:1")
    # tidings' own request (the holder publishing) goes on; a new hold does not.
    assert book.enter("doc:1", owned=True, now_ms=1) is Entry.GO
    assert book.enter("doc:1", owned=True, now_ms=1, pin=True) is Entry.RELEASED
    assert book.unpin("doc:1", 2)
    book.lost("doc:1")
    assert book.enter("doc:1", owned=True, now_ms=3) is Entry.RELEASED
    book.disowned(lambda key: True)  # the next ring: the mark goes
    assert book.enter("doc:1", owned=True, now_ms=4) is Entry.GAIN


def test_releasing_every_key_is_for_good() -> None:
    book = HeldKeys(IDLE_MS)
    book.enter("doc:1", owned=True, now_ms=0)
    book.gained("doc:1", ok=True, owned=True, now_ms=0)
    book.enter("doc:2", owned=True, now_ms=0)  # gaining: lost when it reports
    assert book.release_every_key() == ["doc:1"]
    assert book.gained("doc:2", ok=True, owned=True, now_ms=1) is KeyPhase.LOSING
    book.disowned(lambda key: True)  # a ring does not take the node back
    assert book.enter("doc:3", owned=True, now_ms=2) is Entry.RELEASED
    assert book.enter("doc:3", owned=False, now_ms=2) is Entry.ELSEWHERE


def test_release_where_gives_keys_not_met_yet_until_the_next_ring() -> None:
    book = HeldKeys(IDLE_MS)
    for key in ("doc:1", "room:1"):
        book.enter(key, owned=True, now_ms=0)
        book.gained(key, ok=True, owned=True, now_ms=0)
    assert book.release_where(lambda key: key.startswith("doc:")) == ["doc:1"]
    assert book.enter("doc:2", owned=True, now_ms=1) is Entry.RELEASED  # never seen
    assert book.enter("room:2", owned=True, now_ms=1) is Entry.GAIN
    book.disowned(lambda key: True)
    assert book.enter("doc:2", owned=True, now_ms=2) is Entry.GAIN


def test_the_idle_time_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        HeldKeys(0)


class KeyCycles(RuleBasedStateMachine):
    """Random requests, holds, subscriptions, rings, releases and sweeps, with the
    handler's calls completing in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.book = HeldKeys(IDLE_MS)
        self.now = 0
        self.owned = set(KEYS)
        self.calls: dict[str, list[str]] = {key: [] for key in KEYS}
        self.gaining: set[str] = set()
        self.losing: set[str] = set()
        self.pins: dict[str, int] = dict.fromkeys(KEYS, 0)
        self.subscriptions: dict[str, int] = dict.fromkeys(KEYS, 0)

    def start_losing(self, keys: list[str]) -> None:
        for key in keys:
            assert key not in self.losing
            self.losing.add(key)

    @rule(key=st.sampled_from(KEYS), pin=st.booleans())
    def request(self, key: str, pin: bool) -> None:
        phase = self.book.phase(key)
        entry = self.book.enter(key, owned=key in self.owned, now_ms=self.now, pin=pin)
        if entry is Entry.GAIN:
            assert phase is None
            assert key in self.owned
            self.gaining.add(key)
            self.calls[key].append("gained")
        elif entry is Entry.GO:
            assert phase is KeyPhase.HELD or (phase is KeyPhase.LOSING and not pin)
            if pin:
                self.pins[key] += 1

    @rule(key=st.sampled_from(KEYS), ok=st.booleans())
    def gain_returns(self, key: str, ok: bool) -> None:
        if key not in self.gaining:
            return
        self.gaining.discard(key)
        phase = self.book.gained(key, ok=ok, owned=key in self.owned, now_ms=self.now)
        if not ok:
            self.calls[key].pop()  # failed: as if never gained
        if phase is KeyPhase.LOSING:
            self.start_losing([key])

    @rule(key=st.sampled_from(KEYS))
    def lost_returns(self, key: str) -> None:
        if key in self.losing and self.book.may_lose(key):
            assert self.pins[key] == 0
            self.losing.discard(key)
            self.calls[key].append("lost")
            self.book.lost(key)

    @precondition(lambda self: any(self.pins.values()))
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from([k for k, n in self.pins.items() if n]))
        self.pins[key] -= 1
        may = self.book.unpin(key, self.now)
        assert may == (key in self.losing and self.pins[key] == 0)

    @rule(key=st.sampled_from(KEYS), on=st.booleans())
    def subscription(self, key: str, on: bool) -> None:
        if on:
            self.subscriptions[key] += 1
            self.book.subscribed(key)
        elif self.subscriptions[key]:
            self.subscriptions[key] -= 1
            self.book.unsubscribed(key, self.now)

    @rule(ms=st.integers(0, 2 * IDLE_MS))
    def time_passes(self, ms: int) -> None:
        self.now += ms
        expired = self.book.expired(self.now)
        for key in expired:
            assert self.subscriptions[key] == 0
            assert self.pins[key] == 0
        self.start_losing(expired)

    @rule(owned=st.sets(st.sampled_from(KEYS)))
    def new_ring(self, owned: set[str]) -> None:
        held = set(self.book.held())
        self.owned = owned
        gone = self.book.disowned(lambda key: key in owned)
        assert set(gone) == held - owned
        self.start_losing(gone)

    @rule(keys=st.sets(st.sampled_from(KEYS)))
    def release(self, keys: set[str]) -> None:
        held = set(self.book.held())
        losing = self.book.release(keys)
        assert set(losing) == held & keys
        self.start_losing(losing)
        for key in keys:
            assert self.book.enter(key, owned=key in self.owned, now_ms=self.now) in (
                Entry.ELSEWHERE,
                Entry.RELEASED,
                Entry.GO,  # losing, a hold's own requests pass
            )

    @rule()
    def leave(self) -> None:
        held = set(self.book.held())
        losing = self.book.release_every_key()
        assert set(losing) == held
        self.start_losing(losing)
        for key in KEYS:
            assert self.book.is_released(key)

    @invariant()
    def gained_and_lost_alternate(self) -> None:
        for key, calls in self.calls.items():
            assert calls[::2] == ["gained"] * len(calls[::2])
            assert calls[1::2] == ["lost"] * len(calls[1::2])
            phase = self.book.phase(key)
            assert (phase is not None) == (len(calls) % 2 == 1)

    @invariant()
    def records_are_the_keys_in_use(self) -> None:
        in_use = {
            key
            for key in KEYS
            if self.book.phase(key) is not None or self.subscriptions[key] or self.pins[key]
        }
        assert len(self.book) == len(in_use)


TestKeyCycles = KeyCycles.TestCase
TestKeyCycles.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


class HandOver(RuleBasedStateMachine):
    """Two books, nodes ``a`` and ``b`` of a ring that ``c`` joins, driven by the ring
    transition of docs/modes/hashing.md (core.handover): a node owns a key for the
    application while it is the key's sequencer (its old owner until the ring is
    final); a giver releases the keys it gives when it seals, and is "handed" once
    their ``lost`` returned; the ring is made final only when every giver handed.
    Then no key's state is ever held on two nodes at once: a new owner gains a key
    only after its old owner's ``lost`` returned."""

    NODES: Final = ("a", "b", "c")
    HANDED_KEYS: Final = tuple(f"doc:{n}" for n in range(12))

    def __init__(self) -> None:
        super().__init__()
        self.transition = Transition(HashRing(["a", "b", "c"]), HashRing(["a", "b"]))
        self.final = False
        self.books = {node: HeldKeys(IDLE_MS) for node in self.NODES}
        self.gaining: set[tuple[str, str]] = set()
        self.losing: set[tuple[str, str]] = set()
        self.sealed: set[str] = set()

    def owns(self, node: str, key: str) -> bool:
        if self.final:
            return self.transition.new_owner(key) == node
        return self.transition.old_owner(key) == node

    def giving(self, node: str) -> list[str]:
        return [k for k in self.HANDED_KEYS if self.transition.old_owner(k) == node]

    def lose(self, node: str, keys: list[str]) -> None:
        self.losing.update((node, key) for key in keys)

    @rule(node=st.sampled_from(NODES), key=st.sampled_from(HANDED_KEYS))
    def request(self, node: str, key: str) -> None:
        entry = self.books[node].enter(key, owned=self.owns(node, key), now_ms=0)
        if entry is Entry.GAIN:
            self.gaining.add((node, key))

    @precondition(lambda self: self.gaining)
    @rule(data=st.data())
    def gain_returns(self, data: st.DataObject) -> None:
        node, key = data.draw(st.sampled_from(sorted(self.gaining)))
        self.gaining.discard((node, key))
        owned = self.owns(node, key)
        if self.books[node].gained(key, ok=True, owned=owned, now_ms=0) is KeyPhase.LOSING:
            self.lose(node, [key])

    @precondition(lambda self: self.losing)
    @rule(data=st.data())
    def lost_returns(self, data: st.DataObject) -> None:
        node, key = data.draw(st.sampled_from(sorted(self.losing)))
        self.losing.discard((node, key))
        self.books[node].lost(key)

    @precondition(lambda self: not self.final)
    @rule(node=st.sampled_from(("a", "b")))
    def seal(self, node: str) -> None:
        if node not in self.sealed:
            self.sealed.add(node)
            transition = self.transition
            self.lose(node, self.books[node].release_where(transition.moves))

    def handed(self, node: str) -> bool:
        moving = [k for k in self.giving(node) if self.transition.moves(k)]
        book = self.books[node]
        return node in self.sealed and all(book.phase(k) is None for k in moving)

    @precondition(lambda self: not self.final)
    @rule()
    def finalize(self) -> None:
        if all(self.handed(node) for node in ("a", "b")):
            self.final = True
            for node, book in self.books.items():
                self.lose(node, book.disowned(partial(self.owns, node)))

    @invariant()
    def no_key_is_held_on_two_nodes(self) -> None:
        for key in self.HANDED_KEYS:
            holders = [n for n, book in self.books.items() if book.phase(key) is not None]
            assert len(holders) <= 1, (key, holders)


TestHandOver = HandOver.TestCase
TestHandOver.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
