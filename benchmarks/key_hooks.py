"""What an application's key handler costs a publication (docs/modes/hashing.md,
"Per-key state"): in-process ``Hub.publish`` on the memory broker, side by side
without ``KeyHooks``, with them and no ring, and with them on a ring node (each channel
of this node's own), over 100 channels whose keys are held (the common case: a
request of a held key asks no one and awaits nothing more). Prints microseconds per
publication, the best of the rounds (a shared machine only adds to a round).

Run: ``.venv/bin/python benchmarks/key_hooks.py [--publications N] [--rounds R]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Final

from tidings.brokers.base import Broker
from tidings.brokers.memory import MemoryBroker
from tidings.core.channel import ChannelName
from tidings.core.namespace import Namespaces
from tidings.core.placement import LOCAL_PLACEMENT, Placement
from tidings.core.routing import FollowingPlacement
from tidings.hub.hub import Hub
from tidings.server.key_hooks import KeyHooks
from tidings.server.key_ownership import KeyOwnership

KINDS: Final = ("no hooks", "hooks", "hooks, ring of 3")
CHANNELS: Final = 100


class Handler:
    """A handler with no state of its own: the cost measured is tidings'."""

    async def gained(self, key: str) -> None:
        """Nothing to load."""

    async def lost(self, key: str) -> None:
        """Nothing to save."""


async def one_round(kind: str, publications: int) -> float:
    """Return the microseconds per publication of one round of ``kind``."""
    namespaces = Namespaces()
    inner = MemoryBroker(namespaces)
    broker: Broker = inner
    placement: Placement = LOCAL_PLACEMENT
    if kind == "hooks, ring of 3":
        ring = FollowingPlacement("a", "http://a", namespaces)
        ring.receive_ring({"a": "http://a", "b": "http://b", "c": "http://c"}, 1)
        placement = ring
    if kind != "no hooks":
        broker = KeyOwnership(placement, namespaces, KeyHooks(Handler())).watched(inner)
    candidates = (ChannelName(f"doc:{n}") for n in range(100 * CHANNELS))
    channels = [c for c in candidates if placement.place(c) == LOCAL_PLACEMENT.place(c)]
    channels = channels[:CHANNELS]
    hub = Hub(broker)
    await hub.start()
    try:
        for channel in channels:  # gained once, before the clock starts
            await hub.publish(channel, b"1")
        started = time.perf_counter()
        for n in range(publications):
            await hub.publish(channels[n % CHANNELS], b"1")
        return (time.perf_counter() - started) / publications * 1e6
    finally:
        await hub.close()


async def main(publications: int, rounds: int) -> None:
    """Run the rounds, the kinds interleaved, and print the best of each."""
    best = dict.fromkeys(KINDS, float("inf"))
    for _ in range(rounds):
        for kind in KINDS:
            best[kind] = min(best[kind], await one_round(kind, publications))
    for kind in KINDS:
        print(f"{kind:>18}: {best[kind]:6.2f} µs per publication (best of {rounds})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--publications", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=7)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.publications, arguments.rounds))
