"""Channel watches for polling: one live hub subscription per polled channel, shared by
every poll of it, and the long polls parked on it.

I/O: subscribes and unsubscribes at the hub, and runs one timer task that lets go of
watches no poll used for ``LINGER_S``. Why: a poll used to read the broker's history
and, if it waited, subscribe at the hub and unsubscribe again: per request, per
publication. A watch (``core.watch.ChannelWatch``) keeps the channel's head and latest
publications current from fan-out, so a poll that finds nothing new, or only what the
watch holds, is answered without the broker, and a long poll waits as one entry in a
list that a publication walks, not as one hub subscriber more.

A watch whose channel loses continuity (the hub's ``report_gap``) is dropped at once;
its parked polls are woken and answer through the broker, which reports the gap.

Watches are capped (``max_watches``, the ``poll_watches`` setting): every poll of a new
channel name would otherwise add one, for ``LINGER_S``, however many names a client
makes up. Past the cap, the least recently used watch that no long poll waits on is
let go. When every watch in reach has waiters, the new channel is not watched: its
polls are answered from the broker, and a long poll of it answers at once instead of
waiting (it cannot park without a watch) — degraded, but bounded, and it never wakes
a waiting poll to make room (which would wake another, and so on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Final

from tidings.core.channel import ChannelName
from tidings.core.publication import Position
from tidings.core.watch import ChannelWatch
from tidings.core.wire import EncodedPublication
from tidings.hub.hub import Hub
from tidings.hub.registry import PresenceEvent
from tidings.transports.deadlines import Deadline, Deadlines

logger = logging.getLogger(__name__)

# A watch no poll touched for this long is let go (polls come back at least this often:
# long polls wait at most 60 s, and short pollers poll every few seconds).
LINGER_S: Final = 75.0
# Publications a watch keeps: enough for a poller a few seconds behind a busy channel.
RECENT_KEEP: Final = 100
DEADLINE_GRAIN_S: Final = 0.05
DEFAULT_MAX_WATCHES: Final = 10_000
# How many of the least recently used watches are looked at for one without waiters.
EVICTION_SCAN: Final = 64


class Parked:
    """A long poll waiting on one or more watches; ``wake`` runs its callback once."""

    __slots__ = ("_deadline", "_on_wake", "_watches", "woken")

    def __init__(self, on_wake: Callable[[], None]) -> None:
        self._on_wake = on_wake
        self._watches: list[Watch] = []
        self._deadline: Deadline | None = None
        self.woken = False

    def wake(self) -> None:
        """Leave every watch and call back (once): something arrived, or time ran out."""
        if self.woken:
            return
        self.cancel()
        self._on_wake()

    def cancel(self) -> None:
        """Leave every watch without calling back (the client went away)."""
        self.woken = True
        for watch in self._watches:
            watch.waiters.discard(self)
        self._watches = []
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class Watch:
    """The hub subscriber behind one channel's ``ChannelWatch``."""

    __slots__ = ("_owner", "channel", "client_id", "dropped", "last_used_s", "view", "waiters")

    user = ""

    def __init__(self, owner: PollWatches, channel: ChannelName, client_id: str) -> None:
        self._owner = owner
        self.channel = channel
        self.client_id = client_id
        self.view: ChannelWatch | None = None  # set once the hub subscription is made
        self.waiters: set[Parked] = set()
        self.last_used_s = time.monotonic()
        self.dropped = False

    @property
    def clients(self) -> int:
        """Clients this subscriber stands for: its waiting long polls (hub counts)."""
        return len(self.waiters)

    # Polls are answered from the watch's view, never ahead of a relay's link.
    is_relay = False

    def deliver(self, publication: EncodedPublication) -> None:
        """Advance the view and wake the long polls parked here (hub fan-out)."""
        view = self.view
        if view is None or self.dropped:
            return
        try:
            view.receive_publication(publication.publication)
        except ValueError:
            logger.warning("poll watch of %s lost continuity; dropping it", self.channel)
            self.report_gap(self.channel)
            return
        self._wake_all()

    def deliver_presence(self, event: PresenceEvent) -> None:
        """Polls get no presence events."""

    def report_gap(self, channel: ChannelName) -> None:
        """Continuity is lost: drop the watch; parked polls answer through the broker."""
        self._owner.drop(self)
        self._wake_all()

    def _wake_all(self) -> None:
        waiters = list(self.waiters)
        self.waiters.clear()
        for parked in waiters:
            try:
                parked.wake()
            except Exception:
                logger.exception("a parked poll of %s failed to answer", self.channel)


class PollWatches:
    """The watches of one node's polled channels; see the module docstring."""

    def __init__(
        self,
        hub: Hub,
        new_client_id: Callable[[], str],
        max_watches: int = DEFAULT_MAX_WATCHES,
    ) -> None:
        """Watch channels through ``hub``, at most ``max_watches`` at once.

        Raises:
            ValueError: ``max_watches`` is less than 1.
        """
        if max_watches < 1:
            raise ValueError(f"max_watches must be at least 1, got {max_watches}")
        self._hub = hub
        self._new_client_id = new_client_id
        self._max_watches = max_watches
        # Least recently used first: ``view`` moves a watch to the end.
        self._watches: OrderedDict[ChannelName, Watch] = OrderedDict()
        self._creating: dict[ChannelName, asyncio.Future[None]] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._leaving: set[asyncio.Task[bool]] = set()
        self._deadlines = Deadlines(DEADLINE_GRAIN_S)

    def view(self, channel: ChannelName) -> ChannelWatch | None:
        """Return the live view of ``channel``, if it is watched (and mark it used)."""
        watch = self._watches.get(channel)
        if watch is None or watch.view is None:
            return None
        watch.last_used_s = time.monotonic()
        self._watches.move_to_end(channel)
        return watch.view

    def __len__(self) -> int:
        return len(self._watches)

    async def ensure(self, channel: ChannelName, since: Position | None) -> None:
        """Watch ``channel`` from now on, seeded from ``since`` where history has it,
        unless the cap is reached and no watch can be let go (see the module docstring).

        Raises:
            Unavailable: the broker failed; nothing is watched.
        """
        if channel in self._watches:
            return
        creating = self._creating.get(channel)
        if creating is not None:
            await asyncio.shield(creating)
            return
        if len(self._watches) + len(self._creating) >= self._max_watches and not self._evict():
            return
        done = self._creating[channel] = asyncio.get_running_loop().create_future()
        watch = Watch(self, channel, self._new_client_id())
        try:
            result = await self._hub.subscribe(channel, watch, since)
            assert result is not None, "a new watch holds no channel yet"
            recent = result.publications if result.recovered else ()
            watch.view = ChannelWatch(result.position, recent, RECENT_KEEP)
            self._watches[channel] = watch
            self._start_sweeper()
        finally:
            del self._creating[channel]
            done.set_result(None)

    def _evict(self) -> bool:
        """Let go of the least recently used watch no long poll waits on; return whether
        one was found among the ``EVICTION_SCAN`` least recently used."""
        for _, watch in zip(range(EVICTION_SCAN), self._watches.values(), strict=False):
            if not watch.waiters:
                self.drop(watch)
                return True
        return False

    def park(
        self, channels: Sequence[ChannelName], wait_s: float, on_wake: Callable[[], None]
    ) -> Parked:
        """Park a long poll on the watches of ``channels`` (all watched) for ``wait_s``.

        Its time-out shares a timer with the polls whose waits end in the same
        ``DEADLINE_GRAIN_S`` (``deadlines.py``): hundreds of pollers re-parking after
        one publication cost one timer, not hundreds.
        """
        parked = Parked(on_wake)
        for channel in channels:
            watch = self._watches[channel]
            watch.waiters.add(parked)
            parked._watches.append(watch)
        parked._deadline = self._deadlines.call_after(wait_s, parked.wake)
        return parked

    def drop(self, watch: Watch) -> None:
        """Stop using ``watch``; its hub subscription ends soon after."""
        if watch.dropped:
            return
        watch.dropped = True
        if self._watches.get(watch.channel) is watch:
            del self._watches[watch.channel]
        task = asyncio.get_running_loop().create_task(self._hub.unsubscribe(watch.channel, watch))
        self._leaving.add(task)
        task.add_done_callback(self._left)

    def _left(self, task: asyncio.Task[bool]) -> None:
        self._leaving.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("leaving a poll watch failed: %s", task.exception())

    async def wait_left(self) -> None:
        """Return once every dropped watch has left the hub."""
        while self._leaving:
            await asyncio.wait(set(self._leaving))

    def release_all(self) -> None:
        """Answer every parked long poll now (the node is draining)."""
        for watch in list(self._watches.values()):
            watch._wake_all()

    async def close(self) -> None:
        """Stop the sweeper and let go of every watch."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for watch in list(self._watches.values()):
            watch._wake_all()
            self.drop(watch)
        await self.wait_left()

    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        """Let go of watches no poll used for ``LINGER_S`` and none waits on."""
        while True:
            await asyncio.sleep(LINGER_S / 3)
            stale_before = time.monotonic() - LINGER_S
            for watch in list(self._watches.values()):
                if not watch.waiters and watch.last_used_s < stale_before:
                    self.drop(watch)
