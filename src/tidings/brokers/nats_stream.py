"""The history stream of the NATS broker: its configuration, the bodies stored in it, and
the JetStream API requests the broker makes (create or update the stream, read a
message, publish with expectations). Network I/O through a ``nats.aio`` client.

One stream holds every channel (``<prefix>-history``, subjects ``<prefix>.h.>``), each
channel on its own subject. It keeps at most ``max_msgs_per_subject`` messages per
channel (the largest history size of the namespaces; reads trim to the channel's own
namespace) and has no age limit: a channel's last message is its *head* (epoch, offset
and stream sequence) and must outlive any idle time, as the Redis broker's head does;
reads drop publications older than the namespace's ttl themselves. The stream
republishes each message it stored on the channel's live subject (``RePublish``), so
live delivery carries only publications the stream accepted, in stream order.

A body is one JSON object: ``{"epoch", "offset", "prev", "ts", "key"?, "info"?,
"data"}``; ``prev`` is the stream sequence of the channel's previous message (the one
the publish expected with ``Nats-Expected-Last-Subject-Sequence``), so a reader walks a
channel's history backwards from its head without scanning other channels.

The epoch of a channel's first publication (and of a channel never published to) is the
stream's: a digest of the stream's creation time, which changes only when the stream is
deleted and made again, that is when every channel's history was lost.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Final

import msgspec
from nats.aio.client import Client
from nats.errors import NoRespondersError

from tidings.brokers.nats_subjects import stream_name
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Publication
from tidings.errors import BrokerError, BrokerUnavailable

# JetStream error codes the broker reads (nats-server's errors.json).
WRONG_LAST_SEQUENCE: Final = 10071
# Newer servers (2.10+) on a cluster: refused while another publish of the subject is
# in flight.
WRONG_LAST_SEQUENCE_IN_FLIGHT: Final = 10164
CONFLICTS: Final = frozenset((WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT))
NO_MESSAGE_FOUND: Final = 10037
STREAM_NOT_FOUND: Final = 10059
API_TIMEOUT_S: Final = 5.0


class _Info(msgspec.Struct, frozen=True):
    client: str
    user: str


class _Header(msgspec.Struct, frozen=True, omit_defaults=True):
    epoch: str
    offset: int
    prev: int
    ts: int
    key: str | None = None
    info: _Info | None = None


class _Body(msgspec.Struct, frozen=True):
    epoch: str
    offset: int
    prev: int
    ts: int
    data: msgspec.Raw
    key: str | None = None
    info: _Info | None = None


class _ApiError(msgspec.Struct, frozen=True):
    code: int = 0
    err_code: int = 0
    description: str = ""


class _Ack(msgspec.Struct, frozen=True):
    stream: str = ""
    seq: int = 0
    error: _ApiError | None = None


class _Stored(msgspec.Struct, frozen=True):
    subject: str
    seq: int
    data: str = ""  # base64


class _GetReply(msgspec.Struct, frozen=True):
    message: _Stored | None = None
    error: _ApiError | None = None


class _StreamConfig(msgspec.Struct, frozen=True):
    max_msgs_per_subject: int = -1
    num_replicas: int = 1


class _StreamReply(msgspec.Struct, frozen=True):
    config: _StreamConfig | None = None
    created: str = ""
    error: _ApiError | None = None


_encode = msgspec.json.Encoder().encode
_decode_body = msgspec.json.Decoder(_Body).decode
_decode_ack = msgspec.json.Decoder(_Ack).decode
_decode_get = msgspec.json.Decoder(_GetReply).decode
_decode_stream = msgspec.json.Decoder(_StreamReply).decode


@dataclass(frozen=True, slots=True)
class StoredPublication:
    """A publication as the stream holds it: with its stream sequence and the one before."""

    publication: Publication
    seq: int
    prev: int


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """How the history stream is made."""

    prefix: str
    replicas: int
    storage: str  # "file" or "memory"
    max_per_channel: int


class JetStreamError(BrokerError):
    """JetStream refused a request; ``err_code`` is its error code."""

    def __init__(self, what: str, error: _ApiError) -> None:
        super().__init__(f"{what} failed: {error.description} (JetStream error {error.err_code})")
        self.err_code = error.err_code


class StreamMissing(BrokerUnavailable):
    """No stream took the publish (deleted, or NATS lost it): nothing was stored."""


def encode_body(
    epoch: str,
    *,
    offset: int,
    prev: int,
    data: bytes,
    ts: int,
    key: str | None,
    info: ClientInfo | None,
) -> bytes:
    """Return the stored body of a publication (see the module docstring)."""
    header = _encode(
        _Header(
            epoch, offset, prev, ts, key, None if info is None else _Info(info.client, info.user)
        )
    )
    # ``data`` is already JSON text: spliced in, never re-encoded.
    return b"".join((header[:-1], b',"data":', data, b"}"))


def decode_body(channel: ChannelName, body: bytes, seq: int) -> StoredPublication:
    """Rebuild a stored publication of ``channel`` from its body.

    Raises:
        BrokerError: the body is not one this module wrote.
    """
    try:
        stored = _decode_body(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise BrokerError(f"unreadable publication in {channel} at sequence {seq}") from exc
    info = None if stored.info is None else ClientInfo(stored.info.client, stored.info.user)
    publication = Publication(
        channel, stored.epoch, stored.offset, bytes(stored.data), stored.ts, stored.key, info
    )
    return StoredPublication(publication, seq, stored.prev)


def epoch_of_stream(name: str, created: str) -> str:
    """Return the epoch of channels first published in the stream ``name`` made at ``created``."""
    digest = hashlib.sha256(f"{name}\x00{created}".encode()).digest()
    return base64.urlsafe_b64encode(digest[:8]).decode().rstrip("=")


class HistoryStream:
    """JetStream requests on the history stream; each raises ``BrokerError`` on failure."""

    def __init__(self, client: Client, settings: StreamSettings) -> None:
        self._client = client
        self._settings = settings
        self.name = stream_name(settings.prefix)
        self._api = "$JS.API"

    async def _request(self, subject: str, payload: bytes, what: str) -> bytes:
        return await request_reply(
            self._client, subject, payload, what=what, timeout_s=API_TIMEOUT_S
        )

    async def ensure(self) -> str:
        """Make the stream if missing, raise its per-channel limit if this node needs
        more, and return the epoch of its channels' first publications."""
        settings = self._settings
        config = {
            "name": self.name,
            "subjects": [f"{settings.prefix}.h.>"],
            "retention": "limits",
            "storage": settings.storage,
            "num_replicas": settings.replicas,
            "max_msgs_per_subject": settings.max_per_channel,
            "max_age": 0,
            "discard": "old",
            "republish": {"src": f"{settings.prefix}.h.>", "dest": f"{settings.prefix}.l.>"},
        }
        info_subject = f"{self._api}.STREAM.INFO.{self.name}"
        reply = _decode_stream(await self._request(info_subject, b"", "reading the stream"))
        if reply.error is not None and reply.error.err_code == STREAM_NOT_FOUND:
            create = f"{self._api}.STREAM.CREATE.{self.name}"
            reply = _decode_stream(
                await self._request(create, _encode(config), "making the stream")
            )
        elif (
            reply.config is not None
            and reply.config.max_msgs_per_subject < settings.max_per_channel
        ):
            update = f"{self._api}.STREAM.UPDATE.{self.name}"
            raised = {**config, "num_replicas": reply.config.num_replicas}
            reply = _decode_stream(
                await self._request(update, _encode(raised), "updating the stream")
            )
        if reply.error is not None:
            raise JetStreamError(f"preparing the stream {self.name}", reply.error)
        return epoch_of_stream(self.name, reply.created)

    async def last(self, channel: ChannelName, subject: str) -> StoredPublication | None:
        """Return ``channel``'s last stored publication, ``None`` if it has none."""
        return await self._get(channel, {"last_by_subj": subject})

    async def at(self, channel: ChannelName, seq: int) -> StoredPublication | None:
        """Return the publication at stream sequence ``seq``, ``None`` if it is gone."""
        return await self._get(channel, {"seq": seq})

    async def _get(
        self, channel: ChannelName, request: dict[str, object]
    ) -> StoredPublication | None:
        what = f"reading the history of {channel}"
        subject = f"{self._api}.STREAM.MSG.GET.{self.name}"
        reply = _decode_get(await self._request(subject, _encode(request), what))
        if reply.error is not None:
            if reply.error.err_code == NO_MESSAGE_FOUND:
                return None
            raise JetStreamError(what, reply.error)
        assert reply.message is not None, "a reply without error holds a message"
        body = base64.b64decode(reply.message.data)
        return decode_body(channel, body, reply.message.seq)

    async def publish(
        self, subject: str, body: bytes, *, expected_last: int, timeout_s: float
    ) -> int:
        """Store ``body`` if ``subject``'s last message is at ``expected_last`` (0: none).

        No ``Nats-Msg-Id``: see ``nats_keys`` for why idempotency lives elsewhere.

        Returns:
            The stream sequence it is stored at.

        Raises:
            StreamMissing: no stream takes ``subject``; nothing was stored.
            JetStreamError: refused; ``err_code`` in ``CONFLICTS`` when another
                publish came first.
            BrokerError: no answer (it may have been stored).
        """
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(expected_last),
            "Nats-Expected-Stream": self.name,
        }
        try:
            reply = await self._client.request(subject, body, timeout=timeout_s, headers=headers)
        except NoRespondersError as exc:
            raise StreamMissing(f"no stream takes {subject}") from exc
        except Exception as exc:  # nats-py's time-outs, no responders, connection closed
            raise BrokerError(f"publishing on {subject} got no answer: {exc!r}") from exc
        try:
            ack = _decode_ack(reply.data)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise BrokerError(f"unreadable JetStream answer: {reply.data[:200]!r}") from exc
        if ack.error is not None:
            raise JetStreamError(f"publishing on {subject}", ack.error)
        return ack.seq


async def request_reply(
    client: Client | None,
    subject: str,
    payload: bytes,
    *,
    what: str,
    timeout_s: float,
    headers: dict[str, str] | None = None,
) -> bytes:
    """Ask ``subject`` and return the reply's data: the one request-reply of the NATS
    broker's parts (stream API, key-value buckets).

    Raises:
        BrokerUnavailable: no connection to NATS now; nothing was sent.
        BrokerError: NATS failed or did not answer within ``timeout_s``.
    """
    if client is None or not client.is_connected:
        raise BrokerUnavailable(f"{what} failed: NATS is not reachable now; nothing was sent")
    try:
        reply = await client.request(subject, payload, timeout=timeout_s, headers=headers)
    except Exception as exc:  # nats-py raises its own tree and asyncio's time-outs
        raise BrokerError(f"{what} failed: {exc!r}") from exc
    return bytes(reply.data)
