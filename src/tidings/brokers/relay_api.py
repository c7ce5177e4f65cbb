"""A relay's calls to its upstream's server API (docs/protocol.md §6): publish, history
and ``/ready``. HTTP I/O over ``httpx``, one keep-alive connection pool.

Failures are sorted once, here, into what the relay broker raises: the client's own
fault (a publication too large, a bad channel) is passed on as the upstream's
``RequestError``; the relay's (its ``api_key`` refused) or the upstream's (unreachable,
``unavailable``, no answer in time) becomes a ``BrokerError`` — ``BrokerUnavailable``
only when nothing can have been made.
"""

from __future__ import annotations

import logging
from typing import Final, Protocol

import httpx
import msgspec

from tidings.brokers.base import HistoryRead, PublishResult
from tidings.client.errors import is_retryable
from tidings.client.frames import HistoryAnswer, decode, to_publications
from tidings.client.http import request_error
from tidings.core.channel import ChannelName
from tidings.core.publication import ClientInfo, Position
from tidings.core.recovery import Gap, GapReason, Replay
from tidings.core.wire import encode_json
from tidings.errors import (
    BrokerError,
    BrokerUnavailable,
    PermissionDenied,
    RequestError,
    Unauthorized,
)

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S: Final = 1.0
# Publishes in flight to the upstream at once; more wait for a connection (within the
# publish time-out).
MAX_CONNECTIONS: Final = 256


class UpstreamCalls(Protocol):
    """What a relay asks of its upstream's API (``UpstreamApi``; tests give a fake)."""

    async def aclose(self) -> None:
        """Close the connections."""
        ...

    async def publish(
        self, channel: ChannelName, data: bytes, key: str | None, info: ClientInfo | None
    ) -> PublishResult:
        """Publish upstream (see ``UpstreamApi.publish``)."""
        ...

    async def history(
        self, channel: ChannelName, since: Position | None, limit: int | None
    ) -> HistoryRead:
        """Read history upstream (see ``UpstreamApi.history``)."""
        ...

    async def is_ready(self) -> bool:
        """Whether the upstream is ready."""
        ...


class PublishAnswer(msgspec.Struct, frozen=True):
    """``POST /api/publish``: where it landed, and whether the key had been published."""

    epoch: str
    offset: int
    duplicate: bool = False


class UpstreamApi:
    """The upstream's server API, called with the relay's ``api_key``."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float) -> None:
        """Call the node at ``base_url`` (``http://host:port``); each call waits at most
        ``timeout_s`` for its answer."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self.base_url = base_url
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout_s,
            limits=httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=64),
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def publish(
        self, channel: ChannelName, data: bytes, key: str | None, info: ClientInfo | None
    ) -> PublishResult:
        """Publish upstream, with the key and the publishing client's ``info`` as given
        (so the upstream dedupes in that user's key space, §6).

        Raises:
            RequestError: the upstream refused the publication itself.
            BrokerUnavailable: the upstream could not be reached; nothing was published.
            BrokerError: no answer in time, the upstream ``unavailable``, or the relay's
                credentials refused: it may or may not have been published.
        """
        body: dict[str, object] = {"channel": channel, "data": msgspec.Raw(data)}
        if key is not None:
            body["key"] = key
        if info is not None:
            body["info"] = {"client": info.client, "user": info.user}
        headers = {"Content-Type": "application/json"}
        try:
            response = await self._http.post(
                "/api/publish", content=encode_json(body), headers=headers
            )
        except httpx.ConnectError as exc:
            raise BrokerUnavailable(f"upstream {self.base_url} unreachable") from exc
        except httpx.HTTPError as exc:
            raise BrokerError(f"upstream {self.base_url} did not confirm: {exc}") from exc
        answer = decode("publish answer", self._checked(response), PublishAnswer)
        return PublishResult(Position(answer.epoch, answer.offset), answer.duplicate)

    async def history(
        self, channel: ChannelName, since: Position | None, limit: int | None
    ) -> HistoryRead:
        """Read ``channel``'s history upstream, as ``Broker.history`` answers.

        Raises:
            RequestError, BrokerError: as ``publish``.
        """
        params: dict[str, str | int] = {"channel": channel}
        if since is not None:
            params["since_epoch"] = since.epoch
            params["since_offset"] = since.offset
        if limit is not None:
            params["limit"] = limit
        try:
            response = await self._http.get("/api/history", params=params)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable(f"upstream {self.base_url} unreachable") from exc
        answer = decode("history answer", self._checked(response), HistoryAnswer)
        head = Position(answer.epoch, answer.offset)
        if since is None or answer.recovered:
            return HistoryRead(head, Replay(tuple(to_publications(answer.publications))))
        return HistoryRead(head, Gap(_gap_reason(since, head)))

    async def is_ready(self) -> bool:
        """Whether the upstream answers ``/ready`` with 200 within a second."""
        try:
            response = await self._http.get("/ready", timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def _checked(self, response: httpx.Response) -> bytes:
        if response.status_code == 200:
            return response.content
        error = request_error(response)
        raise _upstream_failure(error) from error


def _upstream_failure(error: RequestError) -> Exception:
    """The client's fault is passed on as is; the relay's own or the upstream's trouble
    is a broker failure."""
    if isinstance(error, Unauthorized | PermissionDenied):
        logger.warning("the upstream refused the relay's api_key: %s", error.message)
        return BrokerError(f"the upstream refused the relay: {error.message}")
    if is_retryable(error):
        # Not BrokerUnavailable: the upstream may have made a publish it did not confirm.
        return BrokerError(f"the upstream is unavailable: {error.message}")
    return error


def _gap_reason(since: Position, head: Position) -> GapReason:
    if since.epoch != head.epoch:
        return GapReason.EPOCH_CHANGED
    if since.offset > head.offset:
        return GapReason.AHEAD_OF_HEAD
    return GapReason.EVICTED
