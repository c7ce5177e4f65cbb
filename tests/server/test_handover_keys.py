"""A channel's idempotency keys move with it in a hand-over (server/handover.py giving,
server/handover_receiver.py receiving), whatever its history retained: node ``a`` hands
a channel to node ``c`` as ``c`` joins, over a real socket (``POST /node/handover``
served by uvicorn), each node over a store of its own (memory or sqlite). Keys published
before the transition and keys published during it, after the snapshot was acknowledged,
in a namespace retaining nothing (``history_size = 0``) or evicting them at once
(``history_size = 1``), the keys in one message or one key a message: once the ring is
final, a publisher retrying any of them at ``c`` is answered ``duplicate`` with the
original position, and a new key is published after them. And a channel retaining
nothing, sent a fresh snapshot for each publication of the transition, sends each key
once, not its whole window each time."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.support.handover_pair import (
    ALICE,
    Kind,
    ReceivedMessages,
    c_joining,
    moving_from_a_to_c,
)
from tidings.core.publication import Position
from tidings.server import handover_messages


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("namespace", ["bare", "short"])
@pytest.mark.parametrize("keys_per_message", ["all", "one"])
async def test_a_retry_at_the_new_owner_is_a_duplicate_whatever_the_history_retained(
    kind: Kind,
    namespace: str,
    keys_per_message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if keys_per_message == "one":
        # A long dedupe window goes in several messages: here, one key in each.
        monkeypatch.setattr(handover_messages, "MESSAGE_KEY_BYTES", 1)
    channel = moving_from_a_to_c(namespace)
    async with c_joining(kind, tmp_path) as joining:
        a, c = joining.a, joining.c
        # Before the transition, at a: evicted at once (or never retained).
        before = [
            await a.broker.publish(channel, b'{"n":1}', key="k1"),
            await a.broker.publish(channel, b'{"n":2}', key="k2", info=ALICE),
            await a.broker.publish(channel, b'{"n":3}'),
        ]
        await joining.transition()
        # During the transition, after the snapshot: sequenced at a, copied to c.
        during = [
            await a.broker.publish(channel, b'{"n":4}', key="k4"),
            await a.broker.publish(channel, b'{"n":5}', key="k5", info=ALICE),
        ]
        await joining.finish()
        retries = [
            await c.broker.publish(channel, b"{}", key="k1"),
            await c.broker.publish(channel, b"{}", key="k2", info=ALICE),
            await c.broker.publish(channel, b"{}", key="k4"),
            await c.broker.publish(channel, b"{}", key="k5", info=ALICE),
        ]
        fresh = await c.broker.publish(channel, b"{}", key="k6")
    originals = [before[0], before[1], during[0], during[1]]
    assert [p.position for p in originals] == [Position("aEpoch", n) for n in (1, 2, 4, 5)]
    assert [(r.duplicate, r.position) for r in retries] == [(True, p.position) for p in originals]
    assert (fresh.duplicate, fresh.position) == (False, Position("aEpoch", 6))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_channel_retaining_nothing_sends_its_key_window_once_not_at_each_publication(
    kind: Kind, tmp_path: Path
) -> None:
    # With history_size = 0 each publication of the transition is gone from history
    # before the pump reads it, so the pump sends a fresh snapshot for it: those carry
    # only the keys the receiver has not acknowledged, not the whole window again.
    window, during = 20, 10
    channel = moving_from_a_to_c("bare")
    received = ReceivedMessages()
    async with c_joining(kind, tmp_path, received) as joining:
        for n in range(1, window + 1):
            await joining.a.broker.publish(channel, b"{}", key=f"k{n}")
        await joining.transition()
        first_snapshot = len(received.messages)
        for n in range(window + 1, window + during + 1):
            await joining.a.broker.publish(channel, b"{}", key=f"k{n}")
            await received.wait_top(n)  # one fresh snapshot each, none coalesced
        await joining.finish()
        retries = [await joining.c.broker.publish(channel, b"{}", key=f"k{n}") for n in (1, 30)]
    later = received.messages[first_snapshot:]
    assert sum(m.snapshot for m in later) == during  # the case at stake
    sent = Counter(k.key for message in received.messages for k in message.keys)
    assert sum(sent.values()) == window + during  # not ``during`` times the window
    assert sent == Counter(f"k{n}" for n in range(1, window + during + 1))  # each once
    assert [(r.duplicate, r.position.offset) for r in retries] == [(True, 1), (True, 30)]
