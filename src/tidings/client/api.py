"""The server API (docs/protocol.md §6) for the application's backend: publish, broadcast,
history, presence, channels, disconnect.

HTTP I/O over httpx. Every error answer becomes the ``RequestError`` subclass of its
code (``Unauthorized`` for a wrong API key, ``MessageTooLarge``, ...), raised; network
failures are httpx's own exceptions (``httpx.TransportError``), raised as they are:
the caller decides whether a publish is retried (with the same ``key``, it is safe).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeVar

import httpx
import msgspec

from tidings.client.frames import (
    BroadcastAnswer,
    ChannelsAnswer,
    DisconnectAnswer,
    HistoryAnswer,
    PositionAnswer,
    PresenceAnswer,
    decode,
    to_publications,
)
from tidings.client.http import base_url, request_error
from tidings.core.channel import ChannelName
from tidings.core.publication import Position, Publication
from tidings.core.wire import encode_json

T = TypeVar("T")

DEFAULT_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class History:
    """A history read: the channel's head, publications oldest first, and, when read
    from a position, whether that position was ``recovered`` (``False``: publications
    after it were lost, and ``publications`` is empty)."""

    position: Position
    publications: tuple[Publication, ...]
    recovered: bool | None = None


class ApiClient:
    """Calls to one server's API with its key; an async context manager."""

    def __init__(
        self,
        server_url: str,
        api_key: str | None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Call the server at ``server_url`` (``http://host:8000``) with ``api_key``.

        Args:
            server_url: the server's HTTP address, with any path it is mounted under.
            api_key: the server's ``api_key``; ``None`` for a server without one.
            timeout_s: how long one call may take.
            transport: an httpx transport (tests: ``httpx.ASGITransport(app)``).

        Raises:
            ValueError: ``server_url`` is not an http(s) URL.
        """
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(
            base_url=base_url(server_url), headers=headers, timeout=timeout_s, transport=transport
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections; idempotent."""
        await self._http.aclose()

    async def publish(self, channel: str, data: object, key: str | None = None) -> Position:
        """Publish ``data`` (any JSON-serialisable value) in ``channel``.

        Args:
            channel: the channel.
            data: the payload.
            key: an idempotency key: a publish repeating it within the server's dedupe
                window is not published again, and answers the original's position.

        Returns:
            The publication's position.

        Raises:
            TypeError: ``data`` is not JSON-serialisable.
            RequestError: the server refused (``BadRequest``, ``MessageTooLarge``,
                ``Unauthorized``, ...).
        """
        body: dict[str, object] = {"channel": channel, "data": data}
        if key is not None:
            body["key"] = key
        answer = await self._call("POST", "/api/publish", PositionAnswer, body=body)
        return Position(answer.epoch, answer.offset)

    async def broadcast(
        self, channels: Sequence[str], data: object, key: str | None = None
    ) -> dict[ChannelName, Position]:
        """Publish ``data`` in each of ``channels``; return each one's position.

        Raises:
            TypeError: ``data`` is not JSON-serialisable.
            RequestError: the server refused.
        """
        body: dict[str, object] = {"channels": list(channels), "data": data}
        if key is not None:
            body["key"] = key
        answer = await self._call("POST", "/api/broadcast", BroadcastAnswer, body=body)
        return {
            ChannelName(result.channel): Position(result.epoch, result.offset)
            for result in answer.results
        }

    async def history(
        self, channel: str, since: Position | None = None, limit: int | None = None
    ) -> History:
        """Read ``channel``'s history.

        Args:
            channel: the channel.
            since: read the publications after this position; without it, the latest.
            limit: at most this many publications (the first ones after ``since``, or
                the last ones without it).

        Raises:
            RequestError: the server refused.
        """
        params: dict[str, str | int] = {"channel": channel}
        if since is not None:
            params["since_epoch"] = since.epoch
            params["since_offset"] = since.offset
        if limit is not None:
            params["limit"] = limit
        answer = await self._call("GET", "/api/history", HistoryAnswer, params=params)
        return History(
            Position(answer.epoch, answer.offset),
            tuple(to_publications(answer.publications)),
            answer.recovered,
        )

    async def presence(self, channel: str) -> dict[str, str]:
        """Return the clients subscribed to ``channel``: client id to user id.

        Raises:
            RequestError: the server refused (``PermissionDenied`` if presence is off).
        """
        answer = await self._call(
            "GET", "/api/presence", PresenceAnswer, params={"channel": channel}
        )
        return {client: info.user for client, info in answer.clients.items()}

    async def channels(self, prefix: str = "") -> dict[ChannelName, int]:
        """Return the channels with subscribers on this node (names starting with
        ``prefix``) and how many each has.

        Raises:
            RequestError: the server refused.
        """
        answer = await self._call("GET", "/api/channels", ChannelsAnswer, params={"prefix": prefix})
        return {ChannelName(name): count.subscribers for name, count in answer.channels.items()}

    async def disconnect(self, user: str, code: int = 4003, reason: str | None = None) -> int:
        """Disconnect every connection of ``user`` with ``code``, on every node; return how
        many the node called closed itself (the others act just after; docs/server-api.md).

        4000–4499 tell clients not to reconnect, 4500–4999 to reconnect.

        Raises:
            RequestError: the server refused (``BadRequest`` for a code outside 4000–4999).
        """
        body: dict[str, object] = {"user": user, "code": code}
        if reason is not None:
            body["reason"] = reason
        answer = await self._call("POST", "/api/disconnect", DisconnectAnswer, body=body)
        return answer.disconnected

    async def _call(
        self,
        method: str,
        path: str,
        kind: type[T],
        *,
        body: dict[str, object] | None = None,
        params: dict[str, str | int] | None = None,
    ) -> T:
        content = None
        headers = None
        if body is not None:
            try:
                content = encode_json(body)
            except (TypeError, msgspec.EncodeError) as exc:
                raise TypeError(f"data is not JSON-serialisable: {exc}") from exc
            headers = {"Content-Type": "application/json"}
        response = await self._http.request(
            method, path, content=content, params=params, headers=headers
        )
        if response.status_code != 200:
            raise request_error(response)
        return decode(f"answer of {method} {path}", response.content, kind)
