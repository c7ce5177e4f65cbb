"""A giver's hand-over messages to one receiver go in batches (server/handover_sending.py
gathering them, server/handover_receiver.py applying a batch): over a real socket, a
join moving 500 channels from ``a`` to ``c`` costs far fewer calls than two a channel,
every channel arriving with its positions and keys; in a batch, a bad message, or one
made for a channel the receiver does not receive, is refused alone and the others are
applied. And the sender on its own, with a fake receiver: messages gather while calls
are out, an outcome goes to its own message only, and a receiver of the previous
release (one message a call) is sent one message a call."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest

from tests.support.handover_pair import (
    HOUR_MS,
    Kind,
    ReceivedMessages,
    c_joining,
    channels_moving_from_a_to_c,
)
from tidings.core.channel import ChannelName
from tidings.core.publication import Position
from tidings.core.recovery import Replay
from tidings.errors import BadRequest
from tidings.server import handover_sending
from tidings.server.forwarding import Parts
from tidings.server.handover_messages import HandoverAnswer, HandoverError, HandoverMessage
from tidings.server.handover_receiver import HANDOVER_PATH
from tidings.server.handover_sending import HandoverSender

CHANNELS = 500
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_many_moving_channels_go_in_few_calls_with_their_positions_and_keys(
    kind: Kind, tmp_path: Path
) -> None:
    # "short" retains one publication: each channel's first key travels beside its
    # history (evicted), its second with its publication.
    channels = channels_moving_from_a_to_c("short", CHANNELS)
    received = ReceivedMessages()
    async with c_joining(kind, tmp_path, received) as joining:
        a, c = joining.a, joining.c
        for channel in channels:
            await a.broker.publish(channel, b'{"n":1}', key="k1")
            await a.broker.publish(channel, b'{"n":2}', key="k2")
        await joining.transition()
        await joining.finish()
        heads = [(await c.broker.history(channel)).head for channel in channels]
        retries = [
            (await c.broker.publish(channel, b"{}", key=key)).position
            for channel in channels
            for key in ("k1", "k2")
        ]
    # Each channel was still sent its snapshot and its sealed top...
    assert len(received.messages) >= 2 * CHANNELS
    assert {m.channel for m in received.messages if m.snapshot} == set(channels)
    # ...in far fewer calls than one a message (what a giver sent before batching).
    assert len(received.calls) <= 2 * CHANNELS // 10
    assert heads == [Position("aEpoch", 2)] * CHANNELS
    assert retries == [Position("aEpoch", n) for _ in channels for n in (1, 2)]


def message(channel: str, offsets: list[int], giver: str = "a") -> bytes:
    publications = [{"offset": n, "ts": HOUR_MS + n, "data": {"n": n}} for n in offsets]
    top = offsets[-1] if offsets else 0
    body = {"giver": giver, "channel": channel, "epoch": "aEpoch", "top": top}
    return msgspec.json.encode({**body, "snapshot": True, "publications": publications})


async def test_a_bad_message_in_a_batch_is_refused_alone(tmp_path: Path) -> None:
    good, holed, other = channels_moving_from_a_to_c("short", 3)
    batch = [
        message(good, [1, 2]),
        message(holed, [1, 3]),  # not consecutive
        message("not a channel", [1]),
        message(other, [1], giver="b"),  # not b's to give: made with another ring
        message(other, [1]),
    ]
    async with c_joining("memory", tmp_path) as joining:
        await joining.transition()
        status, _, body = await joining.a.link.send(
            good,
            joining.urls["c"],
            ("POST", HANDOVER_PATH, b"[" + b",".join(batch) + b"]"),
            2,
        )
        held = [await joining.c.broker.history(channel) for channel in (good, holed, other)]
    answers = msgspec.json.decode(body, type=list[HandoverAnswer])
    assert status == 200
    assert [a.error.code if a.error else (a.epoch, a.offset) for a in answers] == [
        ("aEpoch", 2),
        "bad_request",
        "bad_request",
        "stale_ring",
        ("aEpoch", 1),
    ]
    assert [read.head for read in held] == [
        Position("aEpoch", 2),
        held[1].head,  # whatever c had: nothing of a's
        Position("aEpoch", 1),
    ]
    assert held[1].head.epoch != "aEpoch"
    assert all(isinstance(read.recovery, Replay) for read in held)


async def test_a_single_message_body_is_still_answered_alone(tmp_path: Path) -> None:
    # A giver of the previous release sends one message a call.
    (channel,) = channels_moving_from_a_to_c("short", 1)
    async with c_joining("memory", tmp_path) as joining:
        await joining.transition()
        status, _, body = await joining.a.link.send(
            channel, joining.urls["c"], ("POST", HANDOVER_PATH, message(channel, [1, 2])), 2
        )
    assert (status, msgspec.json.decode(body, type=HandoverAnswer)) == (
        200,
        HandoverAnswer("aEpoch", 2),
    )


class FakeReceiver:
    """Answers each message of a call by its channel's name, after ``gate`` is set;
    records each call's body. ``one_a_call``: refuses a list as the previous release
    does (400)."""

    def __init__(self, *, one_a_call: bool = False) -> None:
        self.bodies: list[bytes] = []
        self.gate = asyncio.Event()
        self.one_a_call = one_a_call
        self._called = asyncio.Condition()

    async def wait_calls(self, count: int) -> None:
        """Wait until ``count`` calls came (they wait at the gate)."""
        async with self._called:
            await self._called.wait_for(lambda: len(self.bodies) >= count)

    async def post(self, channel: ChannelName, body: bytes, version: int) -> Parts:
        async with self._called:
            self.bodies.append(body)
            self._called.notify_all()
        await self.gate.wait()
        decoded = msgspec.json.decode(body, type=HandoverMessage | list[HandoverMessage])
        if isinstance(decoded, HandoverMessage):
            return 200, JSON, msgspec.json.encode(self.answer(decoded))
        if self.one_a_call:
            error = {"error": {"code": "bad_request", "message": "not a hand-over message"}}
            return 400, JSON, msgspec.json.encode(error)
        return 200, JSON, msgspec.json.encode([self.answer(m) for m in decoded])

    @staticmethod
    def answer(message: HandoverMessage) -> HandoverAnswer:
        if message.channel.startswith("bad:"):
            return HandoverAnswer(error=HandoverError("bad_request", "not consecutive"))
        if message.channel.startswith("moved:"):
            return HandoverAnswer(error=HandoverError("stale_ring", "another ring"))
        return HandoverAnswer(message.epoch, message.top)


def sends(sender: HandoverSender, names: list[str]) -> asyncio.Future[list[object]]:
    return asyncio.gather(
        *(sender.send(ChannelName(n), message(n, [1]), 2) for n in names),
        return_exceptions=True,
    )


async def test_messages_gather_while_calls_are_out() -> None:
    receiver = FakeReceiver()
    sender = HandoverSender("c", receiver.post)
    names = [f"doc:{n}" for n in range(20)]
    sending = sends(sender, names)
    # The first calls go at once, one message each; the others gather meanwhile.
    await receiver.wait_calls(handover_sending.BATCHES_IN_FLIGHT)
    receiver.gate.set()
    answers = await sending
    assert answers == [HandoverAnswer("aEpoch", 1)] * len(names)
    batches = [msgspec.json.decode(b, type=list[HandoverMessage]) for b in receiver.bodies]
    assert [len(batch) for batch in batches] == [1, 1, len(names) - 2]


async def test_an_outcome_goes_to_its_own_message_only() -> None:
    receiver = FakeReceiver()
    receiver.gate.set()
    sender = HandoverSender("c", receiver.post)
    answers = await sends(sender, ["doc:1", "bad:2", "moved:3", "doc:4"])
    assert answers[0] == HandoverAnswer("aEpoch", 1)
    assert isinstance(answers[1], BadRequest)
    assert "not consecutive" in str(answers[1])
    assert answers[2] is None  # stale_ring: the pump pauses and learns the ring
    assert answers[3] == HandoverAnswer("aEpoch", 1)


async def test_a_receiver_of_the_previous_release_is_sent_one_message_a_call() -> None:
    receiver = FakeReceiver(one_a_call=True)
    sender = HandoverSender("c", receiver.post)
    names = [f"doc:{n}" for n in range(5)]
    sending = sends(sender, names)
    await receiver.wait_calls(1)
    receiver.gate.set()
    assert await sending == [HandoverAnswer("aEpoch", 1)] * len(names)
    singles = [b for b in receiver.bodies if not b.startswith(b"[")]
    assert sorted(msgspec.json.decode(b, type=HandoverMessage).channel for b in singles) == names
