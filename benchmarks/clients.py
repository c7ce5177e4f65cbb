"""The load generator's subscribers, one class per transport and wire protocol.

I/O: each client is one TCP connection of the generator to a server under test, read
with a bare ``asyncio.Protocol`` or one keep-alive HTTP/1.1 connection, and records
the stamps of the publications it reads in a ``loadgen.Collector`` (latency is receive
time minus send time, both of the generator's clock). Every client counts the bytes it
reads and writes on its socket in a ``Wire`` (HTTP and WebSocket framing included).

- ``WebSocketClient``: RFC 6455 (``loadgen.Subscriber``), optionally sending one
  subscribe command; tidings, Nchan and the naive server.
- ``SocketIoClient``: Socket.IO v5 over Engine.IO v4 on a raw WebSocket: the open
  packet ``0{...}``, ``40`` to join the default namespace and its ``40{...}`` answer,
  pings ``2`` answered with ``3``, events ``42["pub",{...}]``.
- ``SseClient``: ``text/event-stream``, ready at the response head or at a marker.
- ``TidingsPoller``: ``GET /poll`` with tidings' cursor: long (``wait=``) or short
  (every ``interval_s``, with ``If-None-Match``).
- ``NchanPoller``: Nchan's long poll, resumed with the ``Last-Modified`` and ``Etag``
  of each answer sent back as ``If-Modified-Since`` and ``If-None-Match``.

They are hand-written for the reason ``loadgen.py`` gives: the generator has to stay
cheaper than the server it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar, cast
from urllib.parse import quote

from benchmarks import loadgen

HOST: Final = "127.0.0.1"
TIDINGS_SUBSCRIBE: Final = b'{"id":1,"op":"subscribe","channel":"%s"}' % loadgen.CHANNEL.encode()
SOCKET_IO_PATH: Final = "/socket.io/?EIO=4&transport=websocket"
_STAMP: Final = re.compile(rb'"seq":(\d+),"t":(\d+)')
_CURSOR: Final = re.compile(rb'"cursor":"([^"]+)"')
_HEAD_END: Final = b"\r\n\r\n"


class Wire:
    """Bytes the clients of one phase read from and wrote to their sockets."""

    __slots__ = ("read", "written")

    def __init__(self) -> None:
        self.read = 0
        self.written = 0


def record_stamps(
    collector: loadgen.Collector, index: int, data: bytes, span: tuple[int, int], now_ns: int
) -> None:
    """Record every publication stamp found in ``data[start:end]`` (``span``) as received now."""
    for stamp in _STAMP.finditer(data, *span):
        collector.current.record(index, int(stamp[1]), int(stamp[2]), now_ns)


class Client:
    """What a phase needs of a client: to be ready, to say if it is open, to be closed."""

    ready: asyncio.Future[None]
    _open = True  # a protocol client clears it when its connection is lost

    @property
    def is_open(self) -> bool:
        """Whether the connection is still up (as far as this client has seen)."""
        return self._open

    async def stop(self) -> None:
        """Stop reading and close the connection."""


# A way to open client number ``index`` of a phase on ``port``: it returns once the
# client exists (its ``ready`` may still be pending), so a failure after that point
# still leaves a client to close.
Opener = Callable[[int, int, loadgen.Collector, Wire], Awaitable[Client]]


_P = TypeVar("_P", bound=asyncio.BaseProtocol)


async def _connect(make: Callable[[], _P], port: int) -> _P:
    """Connect a protocol client to ``HOST:port``; return it once the TCP connection is up."""
    _, client = await asyncio.get_running_loop().create_connection(make, HOST, port)
    return client


# -- WebSocket -----------------------------------------------------------------------------


class WebSocketClient(loadgen.Subscriber, Client):
    """``loadgen.Subscriber`` counting the bytes it reads and writes, and whether it is open."""

    def __init__(
        self,
        index: int,
        collector: loadgen.Collector,
        wire: Wire,
        port: int,
        *,
        path: str = "/ws",
        subscribe: bytes | None = TIDINGS_SUBSCRIBE,
    ) -> None:
        request = loadgen.upgrade_request(HOST, port, path)
        super().__init__(index, collector, request, subscribe)
        self._wire = wire
        wire.written += len(request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._wire.read += len(data)
        super().data_received(data)

    def send_text(self, payload: bytes) -> None:
        self._wire.written += len(payload) + 6  # the frame head and mask of a short frame
        super().send_text(payload)

    async def stop(self) -> None:
        self.close()


class SocketIoClient(WebSocketClient):
    """A Socket.IO v5 client of the default namespace ``/`` on an Engine.IO v4 WebSocket.

    The server puts every connection of ``/`` in the benchmark's room, so joining the
    namespace is the subscription; the client is ready at the server's ``40{...}``.
    """

    def __init__(self, index: int, collector: loadgen.Collector, wire: Wire, port: int) -> None:
        super().__init__(index, collector, wire, port, path=SOCKET_IO_PATH, subscribe=None)

    def _on_upgraded(self) -> None:
        """Wait for Engine.IO's open packet instead of being ready at the upgrade."""

    def _on_text(self, data: bytes, start: int, end: int, now_ns: int) -> None:
        kind = data[start : start + 2]
        if kind == b"42":  # a Socket.IO event (EVENT of the default namespace)
            record_stamps(self._collector, self._index, data, (start, end), now_ns)
        elif kind == b"2" and end - start == 1:  # an Engine.IO ping: answer pong at once
            self.send_text(b"3")
        elif kind == b"0{":  # Engine.IO open: connect to the default namespace
            self.send_text(b"40")
        elif kind == b"40" and not self.ready.done():
            self.ready.set_result(None)
        elif kind in (b"44", b"1"):  # CONNECT_ERROR, or Engine.IO close
            self._fail(f"refused by the server: {data[start:end]!r}")


def websocket(path: str = "/ws", subscribe: bytes | None = TIDINGS_SUBSCRIBE) -> Opener:
    """Open WebSocket clients of ``path``, each sending ``subscribe`` first if given."""

    async def open_one(port: int, index: int, collector: loadgen.Collector, wire: Wire) -> Client:
        return await _connect(
            lambda: WebSocketClient(index, collector, wire, port, path=path, subscribe=subscribe),
            port,
        )

    return open_one


async def socket_io(port: int, index: int, collector: loadgen.Collector, wire: Wire) -> Client:
    """Open one Socket.IO client (an ``Opener``)."""
    return await _connect(lambda: SocketIoClient(index, collector, wire, port), port)


# -- Server-Sent Events --------------------------------------------------------------------


class SseClient(asyncio.Protocol, Client):
    """``GET path`` as an event stream; each event's stamps are recorded when read.

    Ready once the ``200`` head has arrived, or, with ``marker``, once an event
    containing it has (tidings' ``event: subscribed``).
    """

    def __init__(
        self,
        index: int,
        collector: loadgen.Collector,
        wire: Wire,
        port: int,
        *,
        path: str,
        marker: bytes | None,
    ) -> None:
        self._index = index
        self._collector = collector
        self._wire = wire
        self._marker = marker
        self._request = b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n" % (
            path.encode(),
            HOST.encode(),
            port,
        )
        self._buffer = b""
        self._head_read = False
        self._transport: asyncio.Transport | None = None
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)
        self._wire.written += len(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._open = False
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"SSE client {self._index}: {exc}"))

    def data_received(self, data: bytes) -> None:
        now_ns = time.time_ns()
        self._wire.read += len(data)
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        if not self._head_read and not self._read_head(data):
            return
        end = data.rfind(b"\n\n")  # events end with a blank line; keep a partial one
        if end < 0:
            self._buffer = data
            return
        self._buffer = data[end + 2 :]
        if not self.ready.done() and self._marker is not None and self._marker in data:
            self.ready.set_result(None)
        record_stamps(self._collector, self._index, data, (0, end), now_ns)

    def _read_head(self, data: bytes) -> bool:
        """Check the response head; whether it is complete (otherwise ``data`` is kept)."""
        if data.find(_HEAD_END) < 0:
            self._buffer = data
            return False
        self._head_read = True
        if not data.startswith(b"HTTP/1.1 200"):
            status = data.split(b"\r\n", 1)[0]
            self.ready.set_exception(ConnectionError(f"SSE refused: {status!r}"))
        elif self._marker is None:
            self.ready.set_result(None)
        return True

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()


def sse(path: str, marker: bytes | None) -> Opener:
    """Open event-stream clients of ``path``, ready at the head or at ``marker``."""

    async def open_one(port: int, index: int, collector: loadgen.Collector, wire: Wire) -> Client:
        return await _connect(
            lambda: SseClient(index, collector, wire, port, path=path, marker=marker), port
        )

    return open_one


# -- polling -------------------------------------------------------------------------------


class Answer:
    """One HTTP answer read by a poller: the status line, the headers it asked for, the body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Poller(Client):
    """Polls on one keep-alive HTTP/1.1 connection in a loop until stopped.

    A subclass writes each request (``_request``) and reads each answer (``_on_answer``);
    ``_prime`` runs once before the client is ready. A connection the server closed is
    opened again. The loop runs as a task started by ``launch``.
    """

    # Headers whose values ``_on_answer`` needs (lower case).
    WANTED: frozenset[bytes] = frozenset()

    def __init__(
        self,
        index: int,
        collector: loadgen.Collector,
        wire: Wire,
        port: int,
        *,
        interval_s: float = 0.0,
        offset_s: float = 0.0,
    ) -> None:
        self._index = index
        self._collector = collector
        self._wire = wire
        self._port = port
        self._interval_s = interval_s
        self._offset_s = offset_s
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._task: asyncio.Task[None] | None = None
        self.ready = asyncio.get_running_loop().create_future()

    def launch(self) -> None:
        """Start polling in a task; ``ready`` settles after ``_prime``."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._disconnect()

    async def _run(self) -> None:
        try:
            await self._prime()
        except Exception as exc:
            self.ready.set_exception(exc)
            return
        self.ready.set_result(None)
        due_s = time.monotonic() + self._offset_s
        try:
            while True:
                if self._interval_s > 0:
                    await asyncio.sleep(max(0.0, due_s - time.monotonic()))
                    due_s = max(due_s + self._interval_s, time.monotonic())
                try:
                    await self._poll()
                except (ConnectionError, OSError, asyncio.IncompleteReadError):
                    self._disconnect()  # the server closed an idle keep-alive: reconnect
        finally:
            self._open = False  # stopped, or an answer it could not take ended the loop

    async def _prime(self) -> None:
        """Connect before being ready; a subclass may also take its first position."""
        await self._connect()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._streams is None:
            self._streams = await asyncio.open_connection(HOST, self._port)
        return self._streams

    def _disconnect(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None

    async def _poll(self) -> None:
        reader, writer = await self._connect()
        request = self._request()
        writer.write(request)
        self._wire.written += len(request)
        answer = await self._read_answer(reader)
        self._on_answer(answer, time.time_ns())

    async def _read_answer(self, reader: asyncio.StreamReader) -> Answer:
        status = await reader.readline()
        read, length = len(status), 0
        headers: dict[bytes, bytes] = {}
        while (line := await reader.readline()) != b"\r\n":
            if not line:
                raise ConnectionError("closed while reading a poll answer")
            read += len(line)
            name, _, value = line.partition(b":")
            name = name.lower()
            if name == b"content-length":
                length = int(value)
            elif name in self.WANTED:
                headers[name] = value.strip()
        body = await reader.readexactly(length) if length else b""
        self._wire.read += read + 2 + len(body)
        return Answer(status, headers, body)

    def _request(self) -> bytes:
        raise NotImplementedError

    def _on_answer(self, answer: Answer, now_ns: int) -> None:
        raise NotImplementedError


class TidingsPoller(Poller):
    """``GET /poll?channel=&cursor=&wait=``: long (``wait_s``) or short (``interval_s``).

    The first poll (``wait=0``, no cursor) takes the channel's current cursor; each
    answer's cursor goes into the next request, and a short poll sends the last
    ``ETag`` as ``If-None-Match`` so that nothing new is a ``304``.
    """

    WANTED = frozenset({b"etag"})

    def __init__(
        self,
        index: int,
        collector: loadgen.Collector,
        wire: Wire,
        port: int,
        *,
        wait_s: int,
        interval_s: float = 0.0,
        offset_s: float = 0.0,
    ) -> None:
        super().__init__(index, collector, wire, port, interval_s=interval_s, offset_s=offset_s)
        self._wait_s = wait_s
        self._next_wait_s = 0
        self._cursor = b""
        self._etag = b""

    async def _prime(self) -> None:
        await self._poll()
        self._next_wait_s = self._wait_s

    def _request(self) -> bytes:
        query = b"channel=%s&wait=%d" % (loadgen.CHANNEL.encode(), self._next_wait_s)
        if self._cursor:
            query += b"&cursor=" + quote(self._cursor).encode()
        etag = self._etag and not self._next_wait_s
        match = b"If-None-Match: %s\r\n" % self._etag if etag else b""
        return b"GET /poll?%s HTTP/1.1\r\nHost: %s:%d\r\n%s\r\n" % (
            query,
            HOST.encode(),
            self._port,
            match,
        )

    def _on_answer(self, answer: Answer, now_ns: int) -> None:
        self._etag = answer.headers.get(b"etag", self._etag)
        if answer.status.startswith(b"HTTP/1.1 304"):
            return
        if not answer.status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"poll refused: {answer.status.strip()!r} {answer.body[:200]!r}")
        cursor = _CURSOR.search(answer.body)
        if cursor is not None:
            self._cursor = cursor[1]
        record_stamps(self._collector, self._index, answer.body, (0, len(answer.body)), now_ns)


class NchanPoller(Poller):
    """Nchan's long poll: each answer is one publication, and its ``Last-Modified`` and
    ``Etag`` go back as ``If-Modified-Since`` and ``If-None-Match`` to ask for the next.

    The first request carries neither and waits for the next publication (the location
    says ``nchan_subscriber_first_message newest``). A ``304`` or a ``408`` (the wait
    ran out) changes nothing: the same request goes again.
    """

    WANTED = frozenset({b"last-modified", b"etag"})

    def __init__(
        self, index: int, collector: loadgen.Collector, wire: Wire, port: int, *, path: str
    ) -> None:
        super().__init__(index, collector, wire, port)
        self._head = b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n" % (path.encode(), HOST.encode(), port)
        self._since = b""

    def _request(self) -> bytes:
        return self._head + self._since + b"\r\n"

    def _on_answer(self, answer: Answer, now_ns: int) -> None:
        if answer.status.startswith((b"HTTP/1.1 304", b"HTTP/1.1 408")):
            return
        if not answer.status.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"poll refused: {answer.status.strip()!r} {answer.body[:200]!r}")
        modified = answer.headers.get(b"last-modified", b"")
        etag = answer.headers.get(b"etag", b"")
        self._since = b"If-Modified-Since: %s\r\nIf-None-Match: %s\r\n" % (modified, etag)
        record_stamps(self._collector, self._index, answer.body, (0, len(answer.body)), now_ns)


def tidings_poll(wait_s: int, interval_s: float = 0.0, clients: int = 1) -> Opener:
    """Open tidings pollers; short ones (``interval_s``) spread evenly over the interval."""

    async def open_one(port: int, index: int, collector: loadgen.Collector, wire: Wire) -> Client:
        poller = TidingsPoller(
            index,
            collector,
            wire,
            port,
            wait_s=wait_s,
            interval_s=interval_s,
            offset_s=interval_s * index / clients,
        )
        poller.launch()
        return poller

    return open_one


def nchan_long_poll(path: str) -> Opener:
    """Open Nchan long pollers of ``path``."""

    async def open_one(port: int, index: int, collector: loadgen.Collector, wire: Wire) -> Client:
        poller = NchanPoller(index, collector, wire, port, path=path)
        poller.launch()
        return poller

    return open_one


# -- many clients at once ------------------------------------------------------------------


class Opened:
    """The clients a phase opened, and how many could not be opened or got refused."""

    __slots__ = ("clients", "failures")

    def __init__(self, clients: list[Client], failures: int) -> None:
        self.clients = clients
        self.failures = failures

    @property
    def open_count(self) -> int:
        """Clients whose connection is still up."""
        return sum(1 for client in self.clients if client.is_open)


async def open_clients(
    opener: Opener,
    port: int,
    indices: range,
    collector: loadgen.Collector,
    wire: Wire,
    *,
    concurrency: int = 100,
    timeout_s: float = 60.0,
    tolerate_failures: bool = False,
) -> Opened:
    """Open a client for each of ``indices``, at most ``concurrency`` connecting at a time.

    Args:
        opener: how to open one client.
        port: the server's port on ``HOST``.
        indices: the clients' numbers (their rows in the collector's receipts).
        collector: where they record deliveries.
        wire: where they count bytes.
        concurrency: handshakes in flight at most.
        timeout_s: the time all of them may take.
        tolerate_failures: count a client that could not connect, was refused or was
            not ready in time instead of raising (to find how many connections a
            server holds).

    Raises:
        ConnectionError, OSError, RuntimeError, TimeoutError: a client failed, unless
            tolerated; the clients already open are closed first.
    """
    gate = asyncio.Semaphore(concurrency)
    clients: list[Client] = []

    async def open_one(index: int) -> None:
        async with gate:
            client = await opener(port, index, collector, wire)
            clients.append(client)
            await client.ready

    tasks = [asyncio.create_task(open_one(index)) for index in indices]
    first = asyncio.ALL_COMPLETED if tolerate_failures else asyncio.FIRST_EXCEPTION
    try:
        done, pending = await asyncio.wait(tasks, timeout=timeout_s, return_when=first)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    failed = [task for task in done if task.exception() is not None]
    if not tolerate_failures and (failed or pending):
        await close_clients(clients)
        error = failed[0].exception() if failed else None
        raise error or TimeoutError(f"{len(pending)} clients not ready in {timeout_s:g} s")
    return Opened(clients, len(failed) + len(pending))


async def close_clients(clients: Sequence[Client]) -> None:
    """Close every client."""
    await asyncio.gather(*(client.stop() for client in clients), return_exceptions=True)
