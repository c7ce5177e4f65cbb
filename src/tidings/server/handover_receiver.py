"""The receiver's side of a hand-over of channels between owners (docs/modes/hashing.md,
"Scaling without loss"; the decisions are ``core.handover``'s): ``POST /node/handover``,
signed as forwarded calls are (``core.node_call``), applied to the node's adopting store.
asyncio and HTTP; the giver's side is ``server.handover``.

A call carries one message, or a batch of them (a list, of several channels: the
giver's ``server.handover_sending``), answered by a list of outcomes in its order; the
messages of a batch are applied concurrently, one message of a channel at a time, and a
message refused (a bad one, or one made with another ring) gets its own error outcome,
leaving the others applied. The single form is what the previous release's givers send.

A *receiver* (the new owner of a moving key) applies each message of a channel by
``decide_replica`` and ``AdoptingStore.adopt`` (positions kept, keys remembered, the
message's own keys too, newly stored publications delivered to its subscribers live),
one message of a channel at a time, and answers the position it holds, or ``resync``
(the giver sends a fresh snapshot). It serves a channel once it applied its snapshot
(``FollowingPlacement.hold_replica``); a channel whose giver's sealed top it holds is
*complete*: when the ring makes it the sequencer, it continues the giver's epoch. One it
holds incompletely (the giver crashed) restarts in a new epoch instead
(``core.ring_gains.decide_takeover``, applied by ``server.handover.Handover``): clients
resuming there hear ``recovered: false``, never a silent gap. A message is accepted only
from the key's old owner, to its new owner, made with the ring this node routes by: any
other is refused ``stale_ring`` (the giver reads the ring again).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from tidings.brokers.base import AdoptingStore
from tidings.core.channel import ChannelName, parse_channel
from tidings.core.dedupe import RememberedKey
from tidings.core.handover import ReplicaStep, decide_replica
from tidings.core.node_call import NODE_AUTH_HEADER
from tidings.core.publication import ClientInfo, Position, Publication
from tidings.core.ring_gains import TakeoverStep
from tidings.core.routing import FollowingPlacement
from tidings.errors import BadRequest, BrokerError, RequestError, StaleRing, Unauthorized
from tidings.server.forwarding import OwnerLink
from tidings.server.handover_messages import (
    MAX_HANDOVER_BODY_BYTES,
    HandoverAnswer,
    HandoverError,
    HandoverMessage,
)
from tidings.transports.http import json_response, read_body, request_error_response

logger = logging.getLogger(__name__)

HANDOVER_PATH: Final = "/node/handover"


class HandoverReceiver:
    """One node's side of receiving channels in transitions of the ring; see the module
    docstring."""

    def __init__(
        self,
        node_id: str,
        placement: FollowingPlacement,
        store: AdoptingStore,
        link: Callable[[], OwnerLink],
        refresh: Callable[[], Awaitable[None]],
    ) -> None:
        """Receive as node ``node_id`` routing by ``placement``, into ``store``;
        ``link()`` verifies the givers' signatures, ``refresh`` reads the ring again
        when a giver knows a newer one."""
        self._node_id = node_id
        self._placement = placement
        self._store = store
        self._link = link
        self._refresh = refresh
        # What each replica holds (from the giver of its key), and which are complete
        # (the giver's sealed top is held).
        self._replicas: dict[ChannelName, Position] = {}
        self._complete: set[ChannelName] = set()
        self._locks: dict[ChannelName, asyncio.Lock] = {}

    def holds_whole(self, channel: ChannelName) -> bool:
        """Whether ``channel`` was handed over complete: its giver's sealed top is held."""
        return channel in self._complete

    def taken_over(self, channel: ChannelName, step: TakeoverStep) -> None:
        """A new ring made this node ``channel``'s sequencer (``decide_takeover``): its
        hand-over is over, the replica continued (``CONTINUE``) or renewed (``RENEW``)."""
        if step is TakeoverStep.CONTINUE:
            self._complete.discard(channel)
        elif step is TakeoverStep.RENEW:
            self._replicas.pop(channel, None)

    async def receive(self, request: Request) -> Response:
        """``POST /node/handover``: apply a giver's message, or batch of messages;
        answer the position held (for a batch, a list of outcomes in its order)."""
        try:
            if request.headers.get(NODE_AUTH_HEADER) is None:
                # Refused before its body is read: only nodes of the ring send these.
                raise Unauthorized("a hand-over must be signed by a node of the ring")
            raw = await read_body(request, MAX_HANDOVER_BODY_BYTES)
            call = self._link().verify(request.headers.get, "POST", HANDOVER_PATH, raw)
            if call is None:
                raise Unauthorized("a hand-over must be signed by a node of the ring")
            try:
                body = msgspec.json.decode(raw, type=HandoverMessage | list[HandoverMessage])
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise BadRequest(f"not a hand-over message or list of them: {exc}") from None
            if call.ring_version > self._placement.ring_version:
                await self._refresh()
            if isinstance(body, HandoverMessage):
                answer = await self._answer(call.ring_version, body)
                return json_response(msgspec.to_builtins(answer))
            # Concurrently: the per-channel lock keeps one channel's messages in order.
            answers = await asyncio.gather(*(self._outcome(call.ring_version, m) for m in body))
        except RequestError as error:
            return request_error_response(error)
        return json_response(msgspec.to_builtins(answers))

    async def _answer(self, version: int, message: HandoverMessage) -> HandoverAnswer:
        """Apply one message of a call signed with ring ``version``.

        Raises:
            BadRequest: not a channel name, or its publications are not consecutive.
            StaleRing: the call's ring is not this node's, or in it this node does not
                receive the channel from that giver.
            BrokerError: the store failed.
        """
        channel = parse_channel(message.channel)
        own = self._placement.ring_version
        if version != own or not self._receives(channel, message.giver):
            raise StaleRing(channel, version, own)
        return await self.apply(channel, message)

    async def _outcome(self, version: int, message: HandoverMessage) -> HandoverAnswer:
        """One message's outcome in a batch: its answer, or its own error."""
        try:
            return await self._answer(version, message)
        except RequestError as error:
            return HandoverAnswer(error=HandoverError(error.code, error.message))
        except BrokerError as exc:  # its own outcome: the others may still be applied
            logger.warning("applying a hand-over message of %s failed: %s", message.channel, exc)
            failed = HandoverError("unavailable", "the receiver's store failed; send it again")
            return HandoverAnswer(error=failed)

    def _receives(self, channel: ChannelName, giver: str) -> bool:
        transition = self._placement.transition
        if transition is None:
            return False
        key = self._placement.key_of(channel)
        return (
            transition.moves(key)
            and transition.old_owner(key) == giver
            and transition.new_owner(key) == self._node_id
        )

    async def apply(self, channel: ChannelName, message: HandoverMessage) -> HandoverAnswer:
        """Apply one message of ``channel`` (already verified as from its giver) to its
        replica; answer the position held, or ``resync``.

        Raises:
            BadRequest: its publications are not consecutive, ending at its top.
            BrokerError: the store failed.
        """
        epoch, top = message.epoch, message.top
        publications = [
            Publication(
                channel,
                epoch,
                p.offset,
                bytes(p.data),
                p.ts,
                p.key,
                None if p.info is None else ClientInfo(p.info.client, p.info.user),
            )
            for p in message.publications
        ]
        lock = self._locks.setdefault(channel, asyncio.Lock())
        async with lock:
            try:
                held = await apply_to_replica(
                    self._store,
                    self._replicas.get(channel),
                    (channel, epoch, top),
                    publications,
                    snapshot=message.snapshot,
                    keys=tuple(RememberedKey(k.key, k.offset, k.ts) for k in message.keys),
                )
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            if held is None:
                return HandoverAnswer(resync=True)
            self._replicas[channel] = held
            if message.snapshot:
                self._placement.hold_replica(channel)
            if message.sealed and held == Position(epoch, top):
                self._complete.add(channel)
        return HandoverAnswer(held.epoch, held.offset)


async def apply_to_replica(
    store: AdoptingStore,
    held: Position | None,
    head: tuple[ChannelName, str, int],
    publications: list[Publication],
    *,
    snapshot: bool,
    keys: tuple[RememberedKey, ...] = (),
) -> Position | None:
    """Apply one hand-over message of a channel to its replica in ``store``, which
    holds ``held`` from this giver (``None``: nothing yet): ``head`` is the channel,
    the message's epoch and its top offset; ``keys`` the giver's idempotency keys it
    carries besides its publications'. Return the position held after, or ``None``
    to ask for a fresh snapshot (``decide_replica``'s ``RESYNC``).

    Raises:
        ValueError: the publications are not consecutive, ending at the top.
        BrokerError: the store failed.
    """
    channel, epoch, top = head
    first = Position(epoch, publications[0].offset if publications else top + 1)
    step = decide_replica(held, first, top, snapshot=snapshot)
    if step is ReplicaStep.RESYNC:
        return None
    if step is ReplicaStep.IGNORE:
        assert held is not None  # decide_replica applies when nothing is held
        if keys and held.epoch == epoch:
            # Its publications are held, its keys may not be (a repeated snapshot
            # of a channel retaining nothing): remember them, moving nothing.
            return await store.adopt(channel, epoch, [], top=held.offset, keys=keys)
        return held
    return await store.adopt(channel, epoch, publications, top=top, keys=keys)
