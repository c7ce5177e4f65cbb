"""Per-key state for an embedding application (docs/modes/hashing.md, "Per-key state"):
its ``KeyHandler`` is told ``gained(key)`` before this node first serves a routing key
as its owner, and ``lost(key)`` when it stops. asyncio: runs the handler's calls as
tasks and makes requests wait for them; the bookkeeping is ``core.key_ownership``'s.

Theory of operation
-------------------
Every request that serves a channel goes through the hub to the broker. With
``KeyHooks`` the app wraps its broker in ``KeyedBroker`` (``server.keyed_broker``), which sends each
``publish``, ``history`` and ``subscribe`` of a channel of a handled namespace through
``KeyOwnership.serve`` first: the first one for a key this node owns runs
``gained(key)`` (one task, shielded from the request's cancellation; concurrent
requests wait for it), the next ones go straight on. Subscriptions at the broker (a
channel with local subscribers) are counted per key, so a key in use never idles out.
The application's own requests use the same door through ``hold``.

``lost(key)`` runs once per ``gained``, when the key leaves (``core.key_ownership``):
a sweep releases keys idle for ``KeyHooks.idle_s``; a new ring (``receive_ring``,
called after the placement took it) loses the keys it gives to other nodes, and only
once their ``lost`` returned (bounded) are their clients moved (``server.ring_moves``),
so a moved client finds the state saved when the new owner gains the key; ``release``
loses keys this node gives away (the hand-over of a ring transition calls it before
writing its "handed" mark; the drain calls ``release_all`` before leaving the ring), and
returns once their ``lost`` returned. ``lost`` waits for the holds of its key to end.

A handler that raises is logged at WARNING, one line with the key, and the node goes
on: a failed ``gained`` leaves the key not gained (the next request tries again, and a
``hold`` raises ``Unavailable``); a failed ``lost`` still drops the key. A call that has
not returned within ``KeyHooks.call_timeout_s`` is cancelled and counts as failed, so a
handler waiting on a database that does not answer neither keeps a key's requests
waiting nor holds a seal, a leave or the idle sweep; the limit counts from the call's
start, not from its wait for one of the ``concurrency`` slots, and the slot is freed
when the call ends, however it ends.

This node "owns" a key for the application while it is the key's sequencer: in a ring
transition (``core.handover``), its old owner until the ring is final, which is what
the placement's ``owns`` must answer then. The giver calls ``release_where`` for the
keys it gives when it seals, and writes its "handed" mark once that returned; the
receiver gains keys at their first request on the final ring, or with ``take``.

Without a ring transition (the hand-over, docs/modes/hashing.md) a new ring applies on
every node at once: the new owner may gain a key (and load its state) before the old
owner's ``lost`` (which saves it) has returned. A planned leave releases every key
before leaving the ring, so it has no such window.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Final, Literal

from tidings.brokers.base import Broker
from tidings.core.channel import ChannelName, NamespaceName, namespace_of
from tidings.core.key_ownership import Entry, HeldKeys, KeyPhase
from tidings.core.namespace import Namespaces
from tidings.core.placement import HERE, Here, Moved, Placement
from tidings.core.routing import FollowingPlacement, OwnerRouting, RingPlacement, routing_key
from tidings.errors import Unavailable
from tidings.server.key_hooks import DEFAULT_KEY_IDLE_S, KeyHooks
from tidings.server.keyed_broker import KeyedBroker

logger = logging.getLogger(__name__)

# A hold of a key released to another node waits this long for the ring that names it.
RELEASED_WAIT_S: Final = 10.0
# A new ring's clients move once the keys it gave away are lost, or after this.
RING_LOST_WAIT_S: Final = 5.0
# The idle sweep runs four times per idle time, at most every few seconds.
_SWEEP_MAX_S: Final = 5.0
_SWEEP_MIN_S: Final = 0.01
# The key whose handler call the current task makes: its own requests of that key (a
# ``gained`` publishing the state it loaded) go straight on instead of waiting for it.
_HANDLING: contextvars.ContextVar[str | None] = contextvars.ContextVar("_HANDLING", default=None)
# What a handler's call that ran out of time leaves, for its warning.
_TIMED_OUT: Final = {
    "gained": "the key is not gained, its next request tries again",
    "lost": "the key is released without its state saved being confirmed",
}
# tidings' own channels (the status page's) have no application state.
_OWN_NAMESPACES: Final = frozenset({NamespaceName("tidings")})


class KeyOwnership:
    """This node's routing keys for the application (see the module docstring):
    ``TidingsApp.keys``."""

    def __init__(
        self, placement: Placement, namespaces: Namespaces, hooks: KeyHooks | None = None
    ) -> None:
        """Place keys by ``placement`` (without a ring, every key is this node's) and
        tell ``hooks``' handler of them (``None``: ``hold`` only places)."""
        self._ring: OwnerRouting | None = (
            placement if isinstance(placement, RingPlacement | FollowingPlacement) else None
        )
        self._namespaces = namespaces
        self._hooks = hooks
        self._handled: frozenset[str] | None = (
            None if hooks is None or hooks.namespaces is None else frozenset(hooks.namespaces)
        )
        idle_ms = max(1, round((hooks.idle_s if hooks else DEFAULT_KEY_IDLE_S) * 1000))
        self._book = HeldKeys(idle_ms)
        self._changed: dict[str, asyncio.Event] = {}
        self._ring_came = asyncio.Event()
        self._gaining: dict[str, asyncio.Task[bool]] = {}
        self._losing: set[asyncio.Task[None]] = set()
        self._after_ring: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._calls = asyncio.Semaphore(hooks.concurrency if hooks else 1)

    @property
    def has_handler(self) -> bool:
        """Whether an application handler is told of keys."""
        return self._hooks is not None

    def key_of(self, channel: str) -> str:
        """Return the routing key of ``channel`` (``user:<id>`` in a ``user``-policy
        namespace, else the channel itself)."""
        return routing_key(ChannelName(channel), self._namespaces)

    def owner_url(self, key: str) -> str | None:
        """Return the base URL of ``key``'s owner (``None``: no ring, this node)."""
        return None if self._ring is None else self._ring.owner_url(key)

    def owns(self, key: str) -> bool:
        """Whether this node owns ``key`` (always, without a ring)."""
        return self._ring is None or self._ring.owns(key)

    def held(self) -> list[str]:
        """Return the keys gained and not being lost."""
        return self._book.held()

    def watched(self, broker: Broker) -> Broker:
        """Return ``broker`` as the hub should use it: through ``KeyedBroker`` if a
        handler is told of keys, else unchanged."""
        return broker if self._hooks is None else KeyedBroker(broker, self)

    # -- the application's door --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[Here | Moved]:
        """Use ``key``'s state: yield ``HERE`` once this node holds the key (gained;
        ``lost`` waits until the block ends), or ``Moved`` with its owner's base URL.
        Keep the block short, and do not nest holds of one key. Inside the key's own
        ``gained`` or ``lost`` it yields ``HERE`` at once (the handler may publish).

        Raises:
            Unavailable: ``gained`` failed, or the key was released to another node and
                no new ring came within ``RELEASED_WAIT_S``.
        """
        if self._hooks is None:
            url = self.owner_url(key)
            yield HERE if url is None or self.owns(key) else Moved(url)
            return
        if _HANDLING.get() == key:  # inside the key's own ``gained`` or ``lost``
            yield HERE
            return
        place = await self._enter(key, pin=True)
        if isinstance(place, Moved):
            yield place
            return
        try:
            yield HERE
        finally:
            if self._book.unpin(key, self._now_ms()):
                self._notify(key)  # its due ``lost`` waits for this

    async def take(self, keys: Iterable[str]) -> None:
        """Gain ``keys`` now, those this node owns (a receiver taking over keys at the
        end of a ring transition), rather than at their first request."""
        if self._hooks is not None:
            await asyncio.gather(*(self._enter(key, pin=False, serving=True) for key in keys))

    async def release(self, keys: Iterable[str]) -> None:
        """Give ``keys`` away: lose those held and return once their ``lost`` returned.
        They are not gained again before the next ring (a hold waits for it). Call it
        before this node stops owning them for good: before a hand-over's "handed"
        mark, before leaving the ring."""
        if self._hooks is None:
            return
        keys = list(keys)
        for key in self._book.release(keys):
            self._start_losing(key)
        await self._settle(keys)

    async def release_where(self, gives: Callable[[str], bool]) -> None:
        """Give away every key ``gives`` names, held or not (the keys a ring transition
        moves from this node: ``lambda key: transition.moves(key)``): lose those held or
        being gained, and return once their ``lost`` returned; none is gained before the
        next ring. Call it when sealing a hand-over, before writing the "handed" mark."""
        if self._hooks is None:
            return
        losing = self._book.release_where(gives)
        for key in losing:
            self._start_losing(key)
        await self._settle([*losing, *(key for key in self._gaining if gives(key))])

    async def release_all(self) -> None:
        """Release every key, for good (a node leaving the ring, or stopping): lose
        those held and return once their ``lost`` returned; no key is gained from now
        on (a hold waits for the ring that names another owner)."""
        if self._hooks is None:
            return
        held = self._book.release_every_key()
        if held:
            logger.info("releasing the %d keys held here before leaving", len(held))
        for key in held:
            self._start_losing(key)
        # A gain under way ends in a lost (released meanwhile), started when it reports.
        while self._gaining or self._losing:
            await asyncio.wait([*self._gaining.values(), *self._losing])

    # -- the node's doors ----------------------------------------------------------------

    def receive_ring(self, then: Callable[[], None] | None = None) -> None:
        """Lose the keys the placement's new ring gives to other nodes (call right after
        the placement took it, in the event loop); then call ``then`` (which moves the
        clients of those keys to their new owners) once their ``lost`` returned, within
        ``RING_LOST_WAIT_S``: a moved client finds the state saved."""
        if self._after_ring is not None:
            self._after_ring.cancel()  # this ring's ``then`` replaces it
            self._after_ring = None
        if self._hooks is None:
            if then is not None:
                then()
            return
        gone = self._book.disowned(self.owns)
        if gone:
            logger.info("the ring gave %d keys held here to other nodes: losing them", len(gone))
        for key in gone:
            self._start_losing(key)
        self._ring_came.set()
        self._ring_came = asyncio.Event()
        losing = list(self._losing)  # this ring's, and any still running
        if then is None:
            return
        if not losing:
            then()
            return
        self._after_ring = asyncio.get_running_loop().create_task(self._then(losing, then))

    @staticmethod
    async def _then(losing: list[asyncio.Task[None]], then: Callable[[], None]) -> None:
        await asyncio.wait(losing, timeout=RING_LOST_WAIT_S)
        then()

    def is_ready_to_serve(self, channel: ChannelName) -> bool:
        """Whether a request of ``channel`` may be served at once (its key is held, or
        not the handler's), noting it as the key's latest use; else ``serve`` it."""
        key = self._handled_key(channel)
        return key is None or self._book.touch(key, self._now_ms())

    async def serve(self, channel: ChannelName) -> None:
        """A subscribe, publish or history read of ``channel`` is about to be served:
        gain its key first if this node owns it and has not gained it."""
        key = self._handled_key(channel)
        if key is not None and not self._book.touch(key, self._now_ms()):
            await self._enter(key, pin=False, serving=True)

    def subscribed(self, channel: ChannelName) -> None:
        """This node subscribed ``channel`` at its broker (its first local subscriber)."""
        key = self._handled_key(channel)
        if key is not None:
            self._book.subscribed(key)

    def unsubscribed(self, channel: ChannelName) -> None:
        """This node unsubscribed ``channel`` (its last local subscriber left)."""
        key = self._handled_key(channel)
        if key is not None:
            self._book.unsubscribed(key, self._now_ms())

    async def start(self) -> None:
        """Start releasing idle keys."""
        if self._hooks is not None and self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep(self._hooks.idle_s))

    async def close(self) -> None:
        """Release every key and stop the sweep; idempotent."""
        for task in (self._sweeper, self._after_ring):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._sweeper = self._after_ring = None
        await self.release_all()

    # -- inside ------------------------------------------------------------------------

    def _handled_key(self, channel: ChannelName) -> str | None:
        if self._hooks is None:
            return None
        namespace = namespace_of(channel)
        handled = self._handled
        if namespace in _OWN_NAMESPACES if handled is None else namespace not in handled:
            return None
        return routing_key(channel, self._namespaces)

    async def _enter(self, key: str, *, pin: bool, serving: bool = False) -> Here | Moved:
        """Enter ``key`` until it is held here (``HERE``) or is not this node's to gain
        (``Moved``; a request of tidings' own then goes on without the handler)."""
        if _HANDLING.get() == key:
            return HERE  # the handler's own request: its call is what others wait for
        loop = asyncio.get_running_loop()
        released_until = loop.time() + RELEASED_WAIT_S
        while True:
            owned = self.owns(key)
            entry = self._book.enter(key, owned=owned, now_ms=self._now_ms(), pin=pin)
            if entry is Entry.GO:
                return HERE
            if entry is Entry.ELSEWHERE or (entry is Entry.RELEASED and serving):
                return Moved(self.owner_url(key) or "")
            if entry is Entry.GAIN:
                task = self._gaining[key] = loop.create_task(self._gain(key))
                # The request may be cancelled (its client left): the gain goes on.
                if not await asyncio.shield(task):
                    if not serving:
                        raise Unavailable(f"the application could not load {key}; retry shortly")
                    return HERE  # tidings serves its own request without the handler
            elif entry is Entry.WAIT:
                await self._phase_change(key)
            else:  # released to another node: wait for the ring that names it
                left_s = released_until - loop.time()
                if left_s <= 0:
                    raise Unavailable(f"{key} is being handed to another node; retry shortly")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ring_came.wait(), left_s)

    async def _gain(self, key: str) -> bool:
        """Run ``gained(key)``; whether it returned."""
        logger.debug("gaining %s", key)
        try:
            ok = await self._call("gained", key)
        finally:
            self._gaining.pop(key, None)
        phase = self._book.gained(key, ok=ok, owned=self.owns(key), now_ms=self._now_ms())
        self._notify(key)
        if phase is KeyPhase.LOSING:
            self._start_losing(key)
        return ok

    def _start_losing(self, key: str) -> None:
        task = asyncio.get_running_loop().create_task(self._lose(key))
        self._losing.add(task)
        task.add_done_callback(self._losing.discard)

    async def _lose(self, key: str) -> None:
        try:
            while not self._book.may_lose(key):  # a hold uses the key's state
                await self._phase_change(key)
            logger.debug("losing %s", key)
            await self._call("lost", key)  # the key is dropped however it ended
            self._book.lost(key)
        finally:
            self._notify(key)

    async def _call(self, kind: Literal["gained", "lost"], key: str) -> bool:
        """Run the handler's ``gained`` or ``lost`` of ``key`` in one of the
        ``concurrency`` slots, cancelled after ``call_timeout_s``; whether it returned.
        A call that raised or ran out of time is one WARNING line."""
        assert self._hooks is not None
        handler, limit_s = self._hooks.handler, self._hooks.call_timeout_s
        _HANDLING.set(key)  # this task's context only
        # The limit starts once the slot is taken: a node leaving with many keys queues
        # their ``lost`` calls, and the queue is not the handler's slowness. Leaving the
        # block frees the slot, so a cancelled call does not keep it.
        async with self._calls:
            limit = asyncio.timeout(limit_s)
            try:
                async with limit:
                    await (handler.gained(key) if kind == "gained" else handler.lost(key))
                return True
            except Exception as exc:
                if not limit.expired():  # it raised (its own TimeoutError included)
                    logger.warning(
                        "key handler's %s(%r) failed: %s: %s", kind, key, type(exc).__name__, exc
                    )
                else:
                    logger.warning(
                        "key handler's %s(%r) did not return within %g s: cancelled; %s",
                        kind,
                        key,
                        limit_s,
                        _TIMED_OUT[kind],
                    )
                return False

    async def _settle(self, keys: Iterable[str]) -> None:
        """Wait until none of ``keys`` is gaining, held or losing (each released)."""
        for key in keys:
            while self._book.phase(key) is not None:
                await self._phase_change(key)

    async def _phase_change(self, key: str) -> None:
        event = self._changed.get(key)
        if event is None:
            event = self._changed[key] = asyncio.Event()
        await event.wait()

    def _notify(self, key: str) -> None:
        event = self._changed.pop(key, None)
        if event is not None:
            event.set()

    async def _sweep(self, idle_s: float) -> None:
        tick_s = min(_SWEEP_MAX_S, max(_SWEEP_MIN_S, idle_s / 4))
        while True:
            await asyncio.sleep(tick_s)
            for key in self._book.expired(self._now_ms()):
                self._start_losing(key)

    @staticmethod
    def _now_ms() -> int:
        return int(time.monotonic() * 1000)  # the clock of asyncio's loop, without the lookup
