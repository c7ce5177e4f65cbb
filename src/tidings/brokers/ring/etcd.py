"""The few calls of etcd's v3 API the ring's membership needs, over its JSON gateway.

HTTP I/O over httpx. etcd serves every v3 call as JSON at ``/v3/...`` on its client
port (the grpc-gateway, on by default): keys and values travel base64-encoded, 64-bit
numbers as strings, and fields at their zero value are left out (a transaction that
failed has no ``succeeded``; a watch event of a put has no ``type``). Why this rather
than a client library: httpx is already a dependency and async; the Python etcd v3
clients need grpcio and protobuf (aetcd), or aiohttp and are unmaintained
(async-etcd3gw), for six calls that fit here.

Calls: lease grant, keep-alive and revoke; get one key or a prefix; a transaction
that writes and deletes only if keys are at the revisions read (compare-and-swap);
and a watch of a prefix, read as a stream of JSON lines.

Several endpoints (the members of an etcd cluster, ``ring_etcd`` as a comma-separated
list): any member answers every call (a follower passes writes to the leader), so the
gateway keeps to one member while it answers, and moves to the next when it does not
(no connection, a time-out, or a 5xx: a member without a leader, or stopping). One
call tries each member once before it fails. A watch that breaks moves to the next
member too; the caller opens it again there from the revision it had reached
(``membership``), so no change is missed.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import httpx
import msgspec

from tidings.errors import BrokerError

DEFAULT_TIMEOUT_S: Final = 5.0


class EtcdError(BrokerError):
    """etcd did not answer, or answered with an error; the cause is chained."""


@dataclass(frozen=True, slots=True)
class KeyValue:
    """One key as read: its value and the revision of its last change."""

    key: str
    value: bytes
    mod_revision: int


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """A change of a watched key: a put (with the new value) or a delete."""

    key: str
    value: bytes
    deleted: bool
    mod_revision: int


@dataclass(frozen=True, slots=True)
class Unchanged:
    """A transaction's condition: ``key`` was last changed at ``mod_revision`` (0: the
    key does not exist)."""

    key: str
    mod_revision: int


class _Kv(msgspec.Struct):
    key: str
    value: str = ""
    mod_revision: str = "0"


class _Header(msgspec.Struct):
    revision: str = "0"


class _RangeAnswer(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    kvs: list[_Kv] = msgspec.field(default_factory=list)


class _LeaseAnswer(msgspec.Struct):
    ID: str = "0"
    TTL: str = "0"


class _KeepAliveAnswer(msgspec.Struct):
    result: _LeaseAnswer = msgspec.field(default_factory=_LeaseAnswer)


class _TxnAnswer(msgspec.Struct):
    succeeded: bool = False


class _Event(msgspec.Struct):
    kv: _Kv
    type: str = "PUT"


class _WatchResult(msgspec.Struct):
    header: _Header = msgspec.field(default_factory=_Header)
    events: list[_Event] = msgspec.field(default_factory=list)
    canceled: bool = False
    cancel_reason: str = ""


class _WatchLine(msgspec.Struct):
    result: _WatchResult | None = None
    error: dict[str, object] | None = None


def _b64(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def parse_endpoints(text: str) -> list[str]:
    """The client URLs of ``ring_etcd``: ``http://10.0.0.1:2379,http://10.0.0.2:2379``.

    Raises:
        ValueError: no URL, or one that is not http(s)://host[:port].
    """
    urls = [part.strip().rstrip("/") for part in text.split(",") if part.strip()]
    for url in urls:
        scheme, _, rest = url.partition("://")
        if scheme.lower() not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"{url!r} is not an etcd client URL such as http://host:2379")
    if not urls:
        raise ValueError("no etcd client URL given")
    return urls


def prefix_end(prefix: str) -> bytes:
    """The first key after every key starting with ``prefix`` (etcd's ``range_end``):
    its last byte plus one (a prefix ending in byte 0xff is not used here)."""
    data = prefix.encode()
    return data[:-1] + bytes([data[-1] + 1])


class EtcdGateway:
    """Calls to an etcd cluster through the members at ``urls`` (``http://127.0.0.1:2379``,
    or several, comma-separated or as a list): see the module docstring."""

    def __init__(self, urls: str | Sequence[str], *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.endpoints = parse_endpoints(urls if isinstance(urls, str) else ",".join(urls))
        self._current = 0
        self._http = httpx.AsyncClient(timeout=timeout_s)

    @property
    def endpoint(self) -> str:
        """The member calls go to now."""
        return self.endpoints[self._current]

    def _move_on(self, failed: int) -> None:
        """The member at index ``failed`` did not answer: the next one is tried (unless
        another call has moved on already)."""
        if self._current == failed:
            self._current = (failed + 1) % len(self.endpoints)

    async def aclose(self) -> None:
        """Close the connections; idempotent."""
        await self._http.aclose()

    async def _call(
        self, path: str, body: Mapping[str, object], *, timeout_s: float | None = None
    ) -> bytes:
        timeout = httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s
        failures = []
        for _ in self.endpoints:
            index = self._current
            url = self.endpoints[index] + path
            try:
                response = await self._http.post(url, json=body, timeout=timeout)
            except httpx.HTTPError as exc:
                failures.append(f"{self.endpoints[index]}: {exc!r}")
                self._move_on(index)
                continue
            if response.status_code >= 500:  # no leader, stopping: another member may serve
                answer = f"{response.status_code} {response.text[:200]}"
                failures.append(f"{self.endpoints[index]}: {answer}")
                self._move_on(index)
                continue
            if response.status_code != 200:
                raise EtcdError(
                    f"etcd {path} answered {response.status_code}: {response.text[:200]}"
                )
            return response.content
        raise EtcdError(f"etcd did not answer {path}: {'; '.join(failures)}")

    # -- leases ------------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        """Grant a lease of ``ttl_s`` seconds; return its id."""
        answer = msgspec.json.decode(
            await self._call("/v3/lease/grant", {"TTL": ttl_s}), type=_LeaseAnswer
        )
        return int(answer.ID)

    async def keep_alive(self, lease: int, *, timeout_s: float | None = None) -> int:
        """Renew ``lease``; return its new time to live in seconds (0: it has expired).
        ``timeout_s`` bounds each member's answer (the gateway's time-out if ``None``)."""
        raw = await self._call("/v3/lease/keepalive", {"ID": str(lease)}, timeout_s=timeout_s)
        return int(msgspec.json.decode(raw, type=_KeepAliveAnswer).result.TTL)

    async def revoke(self, lease: int) -> None:
        """Revoke ``lease``: the keys attached to it are deleted at once."""
        await self._call("/v3/lease/revoke", {"ID": str(lease)})

    # -- keys --------------------------------------------------------------------------

    async def get(self, key: str) -> KeyValue | None:
        """Return ``key``, or ``None`` if it does not exist."""
        found = await self._range({"key": _b64(key)})
        return found[0] if found else None

    async def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Return every key starting with ``prefix`` and the store's revision then."""
        raw = await self._call(
            "/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}
        )
        answer = msgspec.json.decode(raw, type=_RangeAnswer)
        return [self._key_value(kv) for kv in answer.kvs], int(answer.header.revision)

    async def _range(self, body: Mapping[str, object]) -> list[KeyValue]:
        answer = msgspec.json.decode(await self._call("/v3/kv/range", body), type=_RangeAnswer)
        return [self._key_value(kv) for kv in answer.kvs]

    @staticmethod
    def _key_value(kv: _Kv) -> KeyValue:
        return KeyValue(_unb64(kv.key).decode(), _unb64(kv.value), int(kv.mod_revision))

    async def put(self, key: str, value: bytes, *, lease: int | None = None) -> None:
        """Write ``key`` (attached to ``lease``: deleted when it expires)."""
        body: dict[str, object] = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        await self._call("/v3/kv/put", body)

    async def transact(
        self,
        unchanged: Sequence[Unchanged],
        puts: Mapping[str, bytes] | None = None,
        deletes: Sequence[str] = (),
        delete_prefixes: Sequence[str] = (),
    ) -> bool:
        """Write ``puts``, delete ``deletes`` and every key under ``delete_prefixes`` in
        one transaction, only if every key of ``unchanged`` is still at its revision;
        return whether it was done."""
        compare = [
            {
                "target": "MOD",
                "key": _b64(condition.key),
                "result": "EQUAL",
                "mod_revision": str(condition.mod_revision),
            }
            for condition in unchanged
        ]
        success: list[dict[str, object]] = [
            {"request_put": {"key": _b64(key), "value": _b64(value)}}
            for key, value in (puts or {}).items()
        ]
        success += [{"request_delete_range": {"key": _b64(key)}} for key in deletes]
        success += [
            {"request_delete_range": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))}}
            for prefix in delete_prefixes
        ]
        raw = await self._call("/v3/kv/txn", {"compare": compare, "success": success})
        return msgspec.json.decode(raw, type=_TxnAnswer).succeeded

    # -- watch -------------------------------------------------------------------------

    async def watch(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Yield the changes of keys starting with ``prefix`` from ``start_revision`` on,
        a batch per revision, until the stream ends or fails.

        Raises:
            EtcdError: the stream could not be opened, failed, or was cancelled by etcd
                (a revision already compacted away: read again, then watch anew).
        """
        body = {
            "create_request": {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
            }
        }
        timeout = httpx.Timeout(DEFAULT_TIMEOUT_S, read=None)  # a watch is quiet for long
        index = self._current
        try:
            async with self._http.stream(
                "POST", self.endpoints[index] + "/v3/watch", json=body, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    if response.status_code >= 500:
                        self._move_on(index)
                    raise EtcdError(f"etcd watch answered {response.status_code}")
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    decoded = msgspec.json.decode(line, type=_WatchLine)
                    result = decoded.result
                    if decoded.error is not None or result is None or result.canceled:
                        reason = result.cancel_reason if result else decoded.error
                        raise EtcdError(f"etcd cancelled the watch: {reason}")
                    if result.events:
                        yield [
                            WatchEvent(
                                _unb64(event.kv.key).decode(),
                                _unb64(event.kv.value),
                                event.type == "DELETE",
                                int(event.kv.mod_revision),
                            )
                            for event in result.events
                        ]
        except httpx.HTTPError as exc:
            self._move_on(index)  # the member went away: watch on the next one
            raise EtcdError(f"etcd watch at {self.endpoints[index]}: {exc!r}") from exc
        except msgspec.DecodeError as exc:
            raise EtcdError(f"etcd watch sent something unreadable: {exc}") from exc
        self._move_on(index)
        raise EtcdError(f"etcd at {self.endpoints[index]} ended the watch")
