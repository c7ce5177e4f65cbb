"""The idempotency keys of the NATS broker: a JetStream key-value bucket, one entry per
(channel, key), changed only by compare-and-set. Network I/O through a ``nats.aio``
client.

An entry is first *claimed* by the node about to publish the key (created only if
absent, or replaced only at the revision read: ``Nats-Expected-Last-Subject-Sequence``,
which JetStream enforces on a cluster too), then marked *published* with the position
the publication got. Another publish of the key finds the entry: published within the
dedupe window (judged by the publishing node's clock, as every broker judges it), it
returns that position, ``duplicate=True``; claimed, it waits for the claim to end; a
claim older than ``stale_after_ms`` belongs to a node that died or failed mid-publish,
and is taken over after looking in the channel's recent history for the publication
(``NatsBroker`` does that part). A node whose publish was refused before anything was
sent *releases* its claim, so that a retry of the key need not wait for it to go stale.

Why not ``Nats-Msg-Id`` alone: on a cluster, nats-server 2.9 registers a publish's
message id at the stream leader *before* the per-subject expectation is checked, so a
publish refused for "wrong last sequence" leaves its id taken, and a retry carrying it
is answered "duplicate" of nothing (docs/brokers/nats.md). The bucket's age limit
(the dedupe window and a margin) drops old entries; ``max_keys`` is not enforced here.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Final, Literal

import msgspec
from nats.aio.client import Client

from tidings.brokers.nats_stream import request_reply
from tidings.brokers.nats_subjects import token_of
from tidings.core.channel import ChannelName
from tidings.core.publication import Position
from tidings.errors import BrokerError

CONFLICTS: Final = frozenset((10071, 10164))  # wrong last sequence (see nats_stream)
NO_MESSAGE_FOUND: Final = 10037
API_TIMEOUT_S: Final = 5.0
AGE_MARGIN_MS: Final = 60_000


class KeyRecord(msgspec.Struct, frozen=True, omit_defaults=True):
    """What the bucket holds of one key of one channel."""

    state: Literal["claimed", "published", "released"]
    ts: int  # when claimed or published, by the publishing node's clock (ms)
    epoch: str = ""
    offset: int = 0

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.offset)


class _ApiError(msgspec.Struct, frozen=True):
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct, frozen=True):
    seq: int = 0
    error: _ApiError | None = None


class _Stored(msgspec.Struct, frozen=True):
    seq: int
    data: str = ""


class _GetReply(msgspec.Struct, frozen=True):
    message: _Stored | None = None
    error: _ApiError | None = None


_encode = msgspec.json.Encoder().encode
_decode_record = msgspec.json.Decoder(KeyRecord).decode
_decode_ack = msgspec.json.Decoder(_Ack).decode
_decode_get = msgspec.json.Decoder(_GetReply).decode


class KeyIndex:
    """The bucket of idempotency keys; see the module docstring."""

    def __init__(self, prefix: str, *, replicas: int, window_ms: int) -> None:
        self._bucket = f"{prefix}-keys"
        self._stream = f"KV_{self._bucket}"
        self._replicas = replicas
        self._window_ms = window_ms
        self._client: Client | None = None

    async def start(self, client: Client) -> None:
        """Make the bucket if missing (again after NATS lost it).

        Raises:
            BrokerError: it cannot be made.
        """
        self._client = client
        config = {
            "name": self._stream,
            "subjects": [f"$KV.{self._bucket}.>"],
            "max_msgs_per_subject": 1,
            "max_age": (self._window_ms + AGE_MARGIN_MS) * 1_000_000,
            "allow_rollup_hdrs": True,
            "deny_delete": True,
            "storage": "file",
            "num_replicas": self._replicas,
        }
        reply = await self._request(f"$JS.API.STREAM.CREATE.{self._stream}", _encode(config))
        if b'"error"' in reply and b"already in use" not in reply:
            raise BrokerError(f"making the idempotency key bucket failed: {reply[:200]!r}")

    def _subject(self, channel: ChannelName, key: str) -> str:
        digest = hashlib.sha256(key.encode()).digest()[:20]
        name = base64.b32encode(digest).decode().rstrip("=")
        return f"$KV.{self._bucket}.{token_of(channel)}.{name}"

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> bytes:
        return await request_reply(
            self._client,
            subject,
            payload,
            what="idempotency keys",
            timeout_s=API_TIMEOUT_S,
            headers=headers,
        )

    async def read(self, channel: ChannelName, key: str) -> tuple[KeyRecord | None, int]:
        """Return the entry of ``key`` in ``channel`` and its revision (0: none)."""
        request = _encode({"last_by_subj": self._subject(channel, key)})
        reply = _decode_get(await self._request(f"$JS.API.STREAM.MSG.GET.{self._stream}", request))
        if reply.error is not None:
            if reply.error.err_code == NO_MESSAGE_FOUND:
                return None, 0
            raise BrokerError(f"reading idempotency key failed: {reply.error.description}")
        assert reply.message is not None, "a reply without error holds a message"
        try:
            record = _decode_record(base64.b64decode(reply.message.data))
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError):
            return None, reply.message.seq  # not ours: replaced like a missing one
        return record, reply.message.seq

    async def write(
        self, channel: ChannelName, key: str, record: KeyRecord, *, revision: int
    ) -> int | None:
        """Replace the entry if it is still at ``revision`` (0: create it).

        Returns:
            The new revision, or ``None`` if another node changed it first.
        """
        headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
        reply = _decode_ack(
            await self._request(self._subject(channel, key), _encode(record), headers)
        )
        if reply.error is not None:
            if reply.error.err_code in CONFLICTS:
                return None
            raise BrokerError(f"writing idempotency key failed: {reply.error.description}")
        return reply.seq
