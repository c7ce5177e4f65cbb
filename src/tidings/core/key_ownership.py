"""Which routing keys this node holds for an embedding application's key handler
(docs/modes/hashing.md, "Per-key state"). Pure: time arrives as milliseconds, ownership
as booleans or a predicate; the handler's calls and every wait are the server's
(``server.key_ownership``).

Theory of operation
-------------------
An application keeps state per routing key (a document, a user's inbox) on the node
that owns the key: its handler is told ``gained(key)`` before the node first serves
the key and ``lost(key)`` when it stops. ``HeldKeys`` is the bookkeeping of those
calls, one record per key:

* ``phase``: ``None`` (not gained), ``GAINING`` (``gained`` running), ``HELD``,
  ``LOSING`` (``lost`` due or running). ``gained`` and ``lost`` alternate for each
  key, one at a time: a key is gained again only after its ``lost`` returned.
* ``subscribed``: how many of the key's channels this node is subscribed to at its
  broker (it has local subscribers);
* ``pins``: the application's requests inside ``hold`` (they use its state);
* ``active_ms``: the last time a request touched the key, or its last subscriber
  left.

``enter`` is a request reaching the key (a subscribe, publish or history read of one
of its channels, or the application's ``hold``). It answers ``GO`` for a held key;
``GAIN`` (the caller runs ``gained``) for a key this node owns and has not gained;
``WAIT`` while the key is gaining or losing (then enter again); ``ELSEWHERE`` for a
key another node owns; ``RELEASED`` for a key released to another node whose new ring
has not come yet. One exception keeps a hold from waiting on itself: a key whose
``lost`` is due but waits for its pins lets tidings' own requests through (``GO``),
since the application inside its hold may publish.

A key leaves in four ways, each marking it ``LOSING`` at once so that no new hold
starts; ``lost`` runs when its pins are gone (``may_lose``):

1. ``expired``: held, no subscriber, no pin, untouched for ``idle_ms`` (so the held
   keys stay as many as the keys in use);
2. ``disowned``: a new ring gives it to another node;
3. ``release``: this node gives it away (the hand-over of a ring transition, before its
   "handed" mark); the key stays ``RELEASED`` until the next ring, so it is not gained
   again meanwhile (``release_where``: every key a predicate names, such as the keys a
   ring transition moves from this node); ``release_every_key`` (a planned leave or
   shutdown, before leaving the ring) releases every key for good;
4. ``gained`` returned while the key was no longer this node's (``gained`` reports
   ``LOSING``).

A ``gained`` that failed leaves the key not gained: the next request tries again, and
``lost`` is only ever called after a ``gained`` that returned.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass


class KeyPhase(enum.Enum):
    """Where a key is in its gained/lost cycle."""

    GAINING = "gaining"
    HELD = "held"
    LOSING = "losing"


class Entry(enum.Enum):
    """What a request reaching a key must do (``HeldKeys.enter``)."""

    GO = "go"  # the key is held: serve (a hold's pin is taken)
    GAIN = "gain"  # run ``gained`` first, then report it with ``HeldKeys.gained``
    WAIT = "wait"  # gaining or losing: wait for its phase to change, then enter again
    ELSEWHERE = "elsewhere"  # another node owns the key
    RELEASED = "released"  # given away; not gained again before the next ring


@dataclass(slots=True)
class _KeyRecord:
    phase: KeyPhase | None = None
    subscribed: int = 0
    pins: int = 0
    active_ms: int = 0


def _goes(record: _KeyRecord, pin: bool) -> bool:
    """Whether a request goes straight on: the key is held, or its ``lost`` waits for
    holds and the request is not a new hold (the holder may publish)."""
    phase = record.phase
    return phase is KeyPhase.HELD or (phase is KeyPhase.LOSING and record.pins > 0 and not pin)


class HeldKeys:
    """The keys this node holds for its key handler (see the module docstring)."""

    __slots__ = ("_all_released", "_idle_ms", "_keys", "_released", "_released_where")

    def __init__(self, idle_ms: int) -> None:
        """Release a key untouched for ``idle_ms`` with no subscriber and no pin.

        Raises:
            ValueError: ``idle_ms`` is not positive.
        """
        if idle_ms <= 0:
            raise ValueError(f"idle time must be positive, got {idle_ms} ms")
        self._idle_ms = idle_ms
        self._keys: dict[str, _KeyRecord] = {}
        self._released: set[str] = set()
        self._released_where: list[Callable[[str], bool]] = []
        self._all_released = False

    # -- requests ------------------------------------------------------------------

    def enter(self, key: str, *, owned: bool, now_ms: int, pin: bool = False) -> Entry:
        """A request reaches ``key`` (``owned``: this node owns it in its ring); ``pin``:
        an application's hold, which pins the key on ``GO`` until ``unpin``."""
        record = self._keys.get(key)
        if record is not None and _goes(record, pin):
            record.active_ms = now_ms
            if pin:
                record.pins += 1
            return Entry.GO
        phase = None if record is None else record.phase
        if not owned:
            return Entry.ELSEWHERE
        if self.is_released(key):
            return Entry.RELEASED
        if phase is not None:
            return Entry.WAIT
        if record is None:
            record = self._keys[key] = _KeyRecord()
        record.phase = KeyPhase.GAINING
        record.active_ms = now_ms
        return Entry.GAIN

    def touch(self, key: str, now_ms: int) -> bool:
        """A request of tidings' own reaches ``key``: whether it goes straight on (as
        ``enter`` would answer ``GO``), without asking who owns the key."""
        record = self._keys.get(key)
        if record is None or not _goes(record, False):
            return False
        record.active_ms = now_ms
        return True

    def gained(self, key: str, *, ok: bool, owned: bool, now_ms: int) -> KeyPhase | None:
        """Report that ``gained(key)`` returned (``ok``) or raised; ``owned``: whether
        this node owns the key now. Returns its phase: ``HELD``, ``LOSING`` (no longer
        this node's, or released meanwhile: run ``lost`` once ``may_lose``) or ``None``
        (it failed: not gained)."""
        record = self._keys[key]
        assert record.phase is KeyPhase.GAINING, record.phase
        record.active_ms = now_ms
        if not ok:
            record.phase = None
            self._forget_if_unused(key, record)
        elif owned and not self.is_released(key):
            record.phase = KeyPhase.HELD
        else:
            record.phase = KeyPhase.LOSING
        return record.phase

    def unpin(self, key: str, now_ms: int) -> bool:
        """A hold of ``key`` ended; whether its due ``lost`` may run now."""
        record = self._keys[key]
        assert record.pins > 0
        record.pins -= 1
        record.active_ms = now_ms
        return record.phase is KeyPhase.LOSING and record.pins == 0

    def subscribed(self, key: str) -> None:
        """This node subscribed one of ``key``'s channels at its broker."""
        record = self._keys.get(key)
        if record is None:
            record = self._keys[key] = _KeyRecord()
        record.subscribed += 1

    def unsubscribed(self, key: str, now_ms: int) -> None:
        """This node unsubscribed one of ``key``'s channels (its last local subscriber
        left): the key's idle time counts from now."""
        record = self._keys.get(key)
        if record is None or record.subscribed == 0:
            return  # subscribed before the handler counted it: nothing to undo
        record.subscribed -= 1
        record.active_ms = now_ms
        self._forget_if_unused(key, record)

    # -- keys leaving ----------------------------------------------------------------

    def expired(self, now_ms: int) -> list[str]:
        """Mark ``LOSING`` and return the held keys idle since ``idle_ms`` or longer."""
        idle = [
            key
            for key, record in self._keys.items()
            if record.phase is KeyPhase.HELD
            and record.subscribed == 0
            and record.pins == 0
            and now_ms - record.active_ms >= self._idle_ms
        ]
        for key in idle:
            self._keys[key].phase = KeyPhase.LOSING
        return idle

    def disowned(self, owns: Callable[[str], bool]) -> list[str]:
        """A new ring: mark ``LOSING`` and return the held keys ``owns`` no longer gives
        this node; released keys are no longer marked (the ring they waited for came).
        A key still gaining is decided when ``gained`` reports."""
        self._released.clear()
        self._released_where.clear()
        gone = [
            key
            for key, record in self._keys.items()
            if record.phase is KeyPhase.HELD and not owns(key)
        ]
        for key in gone:
            self._keys[key].phase = KeyPhase.LOSING
        return gone

    def release(self, keys: Iterable[str]) -> list[str]:
        """Give ``keys`` away: mark them released until the next ring; mark ``LOSING``
        and return those held (those gaining are lost when ``gained`` reports)."""
        losing = []
        for key in keys:
            self._released.add(key)
            record = self._keys.get(key)
            if record is not None and record.phase is KeyPhase.HELD:
                record.phase = KeyPhase.LOSING
                losing.append(key)
        return losing

    def release_where(self, gives: Callable[[str], bool]) -> list[str]:
        """Give away every key ``gives`` names (those a ring transition moves from this
        node), known or not, until the next ring: mark ``LOSING`` and return those held
        (those gaining are lost when ``gained`` reports)."""
        self._released_where.append(gives)
        return self.release(key for key in self.held() if gives(key))

    def release_every_key(self) -> list[str]:
        """Give every key away, for good (this node is leaving): mark ``LOSING`` and
        return those held; no key is gained from now on."""
        self._all_released = True
        return self.release(self.held())

    def may_lose(self, key: str) -> bool:
        """Whether ``key``'s due ``lost`` may run now (no hold pins it)."""
        record = self._keys.get(key)
        return record is not None and record.phase is KeyPhase.LOSING and record.pins == 0

    def lost(self, key: str) -> None:
        """Report that ``lost(key)`` returned (or raised: the key is gone either way)."""
        record = self._keys[key]
        assert record.phase is KeyPhase.LOSING, record
        assert record.pins == 0, record
        record.phase = None
        self._forget_if_unused(key, record)

    # -- reading ---------------------------------------------------------------------

    def phase(self, key: str) -> KeyPhase | None:
        """Return ``key``'s phase (``None``: not gained)."""
        record = self._keys.get(key)
        return None if record is None else record.phase

    def held(self) -> list[str]:
        """Return the keys gained and not losing."""
        return [key for key, record in self._keys.items() if record.phase is KeyPhase.HELD]

    def is_released(self, key: str) -> bool:
        """Whether ``key`` was released and the next ring has not come yet."""
        return (
            self._all_released
            or key in self._released
            or any(gives(key) for gives in self._released_where)
        )

    def __len__(self) -> int:
        """The number of keys with a record: gained, changing, subscribed or pinned."""
        return len(self._keys)

    def _forget_if_unused(self, key: str, record: _KeyRecord) -> None:
        if record.phase is None and record.subscribed == 0 and record.pins == 0:
            del self._keys[key]
