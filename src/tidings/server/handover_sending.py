"""A giver's hand-over messages to one receiver, gathered into batches (docs/modes/hashing.md,
"Scaling without loss"). asyncio; the HTTP call itself is the caller's (``post``).

Theory of operation
-------------------
Each pump (``server.handover``) sends one message of its channel at a time and waits for
its answer before deciding the next. ``HandoverSender.send`` queues the message; at most
``BATCHES_IN_FLIGHT`` calls go to the receiver at once, each carrying the queue's next
messages of one ring version (a call is signed with one): up to ``BATCH_MESSAGES`` of
them, ``BATCH_BYTES`` together, and one at least whatever its size (a message alone
stays below what a receiver takes in a body, ``MAX_HANDOVER_BODY_BYTES``). While a call
is out the pumps' next messages gather, so a join moving thousands of channels costs
tens of signed calls, not two a channel.

A batch is a JSON list of messages, answered by a list of outcomes in the same order
(``HandoverAnswer``); each outcome goes to its own pump only: a position, ``resync``, or
that message's error (``stale_ring``: the pump pauses and the run learns the new ring;
another: the pump backs off and sends again). So one bad message fails its own channel,
not the batch's others. A call failing as a whole (unreachable, refused, unreadable)
fails each of its messages, as a single call failing failed its one.

A receiver of the previous release takes one message a call: it refuses a list as a
whole with 400. Its messages are then sent again one a call, and so are all its later
ones (that is the only case a new receiver answers a well-formed batch with 400).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import msgspec

from tidings.core.channel import ChannelName
from tidings.errors import BadRequest
from tidings.server.forwarding import Parts, is_stale_ring
from tidings.server.handover_messages import MESSAGE_DATA_BYTES, HandoverAnswer

# Calls to one receiver at once: the next batch gathers while one is out.
BATCHES_IN_FLIGHT: Final = 2
# Messages in one call at most (the receiver applies them concurrently).
BATCH_MESSAGES: Final = 256
# The encoded messages of one call together, at most (a single message may exceed it,
# and then goes alone).
BATCH_BYTES: Final = MESSAGE_DATA_BYTES
_BAD_REQUEST_STATUS: Final = 400

# Sends a body to the receiver, signed with a ring version; ``channel`` names the call
# in errors (the first message's).
Post = Callable[[ChannelName, bytes, int], Awaitable[Parts]]


@dataclass(slots=True)
class _Queued:
    channel: ChannelName
    raw: bytes
    version: int
    answer: asyncio.Future[HandoverAnswer | None]


class HandoverSender:
    """One receiver's hand-over calls from this giver; see the module docstring."""

    def __init__(self, receiver: str, post: Post) -> None:
        """Send to node ``receiver`` with ``post``."""
        self._receiver = receiver
        self._post = post
        self._queue: deque[_Queued] = deque()
        self._in_flight = 0
        self._one_a_call = False  # the receiver is of the previous release
        self._calls: set[asyncio.Task[None]] = set()  # referenced until done

    async def send(self, channel: ChannelName, raw: bytes, version: int) -> HandoverAnswer | None:
        """Send one encoded message of ``channel`` made in ring ``version``; return the
        receiver's answer to it, or ``None`` if the receiver refused it as made with
        another ring (``stale_ring``).

        Raises:
            TidingsError: the call could not be made or was refused as a whole
                (``Unavailable``, ``BadRequest``), or the receiver refused this message.
        """
        answer: asyncio.Future[HandoverAnswer | None] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(channel, raw, version, answer))
        self._start_calls()
        return await answer

    def _start_calls(self) -> None:
        while self._in_flight < BATCHES_IN_FLIGHT:
            batch = self._next_batch()
            if not batch:
                return
            self._in_flight += 1
            call = asyncio.get_running_loop().create_task(
                self._call(batch), name=f"hand-over call to {self._receiver}"
            )
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    def _next_batch(self) -> list[_Queued]:
        """Take the queue's next messages of one ring version, within the bounds."""
        batch: list[_Queued] = []
        size = 0
        while self._queue:
            queued = self._queue[0]
            if queued.answer.done():  # its pump is gone (the run ended)
                self._queue.popleft()
                continue
            if batch and (
                self._one_a_call
                or len(batch) == BATCH_MESSAGES
                or queued.version != batch[0].version
                or size + len(queued.raw) > BATCH_BYTES
            ):
                break
            batch.append(self._queue.popleft())
            size += len(queued.raw)
        return batch

    async def _call(self, batch: list[_Queued]) -> None:
        queued_again = False
        try:
            queued_again = await self._answer(batch)
        except Exception as exc:  # a task boundary: each pump hears of it
            for queued in batch:
                if not queued.answer.done():
                    queued.answer.set_exception(exc)
        finally:
            if not queued_again:
                for queued in batch:  # cancelled: the pumps must not wait forever
                    if not queued.answer.done():
                        queued.answer.cancel()
            self._in_flight -= 1
            self._start_calls()

    async def _answer(self, batch: list[_Queued]) -> bool:
        """Call the receiver with ``batch`` and give each message its outcome; return
        whether they were queued again instead (to be sent one a call)."""
        first = batch[0]
        alone = self._one_a_call
        body = first.raw if alone else b"[" + b",".join(q.raw for q in batch) + b"]"
        parts = await self._post(first.channel, body, first.version)
        if is_stale_ring(parts):
            for queued in batch:
                _settle(queued, None)
            return False
        status, _, content = parts
        if status == _BAD_REQUEST_STATUS and not alone:
            # A receiver of the previous release: these again, and all later, one a call.
            self._one_a_call = True
            self._queue.extendleft(reversed(batch))
            return True
        if status != 200:
            raise BadRequest(f"{self._receiver} answered {status}: {content[:200]!r}")
        if alone:
            _settle(first, msgspec.json.decode(content, type=HandoverAnswer))
            return False
        answers = msgspec.json.decode(content, type=list[HandoverAnswer])
        if len(answers) != len(batch):
            raise BadRequest(
                f"{self._receiver} answered {len(answers)} outcomes to {len(batch)} messages"
            )
        for queued, answer in zip(batch, answers, strict=True):
            if answer.error is None:
                _settle(queued, answer)
            elif answer.error.code == "stale_ring":
                _settle(queued, None)
            elif not queued.answer.done():
                queued.answer.set_exception(
                    BadRequest(
                        f"{self._receiver} refused it: {answer.error.code}: {answer.error.message}"
                    )
                )
        return False


def _settle(queued: _Queued, answer: HandoverAnswer | None) -> None:
    if not queued.answer.done():
        queued.answer.set_result(answer)
