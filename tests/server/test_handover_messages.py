"""How a snapshot's keys are chosen (server/handover_messages.py ``snapshot_keys``): those
of publications it does not carry, less those the receiver already acknowledged in the
same epoch."""

from __future__ import annotations

from tidings.core.channel import ChannelName
from tidings.core.dedupe import RememberedKey
from tidings.core.publication import Position, Publication
from tidings.server.handover_messages import snapshot_keys

CHANNEL = ChannelName("doc:1")
WINDOW = tuple(RememberedKey(f"k{n}", n, 1_000 + n) for n in range(1, 9))


def retained(first: int, last: int) -> tuple[Publication, ...]:
    return tuple(Publication(CHANNEL, "e1", n, b"{}", 1_000 + n) for n in range(first, last + 1))


def offsets(keys: tuple[RememberedKey, ...]) -> list[int]:
    return [k.offset for k in keys]


def test_a_first_snapshot_carries_the_keys_below_its_first_retained_publication() -> None:
    assert offsets(snapshot_keys(WINDOW, retained(6, 8), Position("e1", 8))) == [1, 2, 3, 4, 5]


def test_a_snapshot_retaining_nothing_carries_the_keys_up_to_its_head() -> None:
    assert offsets(snapshot_keys(WINDOW, (), Position("e1", 7))) == [1, 2, 3, 4, 5, 6, 7]


def test_a_fresh_snapshot_leaves_out_the_keys_the_receiver_acknowledged() -> None:
    keys = snapshot_keys(WINDOW, (), Position("e1", 8), known=Position("e1", 5))
    assert offsets(keys) == [6, 7, 8]


def test_keys_acknowledged_in_another_epoch_are_sent_again() -> None:
    keys = snapshot_keys(WINDOW, (), Position("e1", 8), known=Position("e0", 5))
    assert offsets(keys) == list(range(1, 9))
