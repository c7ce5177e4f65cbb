"""The load generator of the benchmarks: WebSocket subscribers and HTTP publishers.

What it measures: for each publication, when each subscriber received it. Every
publication's data carries its sequence number and the generator's wall clock at the
moment it was sent (``time.time_ns``); a subscriber stamps the clock once per socket
read, so latency is receive time minus send time, both from one clock in one process.

Why it is hand-written instead of using the ``websockets`` client: one process has to
read a thousand connections at tens of thousands of frames per second on one core and
still be cheaper than the server it measures. A bare ``asyncio.Protocol`` that parses
server frames (never masked, never fragmented at these sizes) and finds the stamps
with one regular expression search costs a few microseconds per frame; the generator's
own CPU use is reported next to the server's so a reader can check it stayed idle
enough (see README.md).

Publishers: ``HttpPublisher`` sends one request at a time on a keep-alive connection
(the rate and burst phases); ``PipelinedPoster`` keeps many in flight on one (what a
server API can take, in ``compare.py``).
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from array import array
from collections.abc import Callable
from typing import Final, cast

CHANNEL: Final = "bench"
PAYLOAD_BYTES: Final = 100
POST_TIMEOUT_S: Final = 30.0
# The fixed example key of RFC 6455; the generator does not check the server's answer.
_WS_KEY: Final = b"dGhlIHNhbXBsZSBub25jZQ=="
_STAMP: Final = re.compile(rb'"seq":(\d+),"t":(\d+)')
_CONTENT_LENGTH: Final = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_OP_TEXT: Final = 0x1
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA
_LENGTH_16: Final = 126
_LENGTH_64: Final = 127
_HEAD_BYTES: Final = {_LENGTH_16: 4, _LENGTH_64: 10}
_CLOSE_NORMAL: Final = (1000).to_bytes(2, "big")

Wrap = Callable[[bytes], bytes]


def _padding() -> bytes:
    bare = b'{"seq":%d,"t":%d,"pad":""}' % (0, time.time_ns())
    return b"x" * max(0, PAYLOAD_BYTES - len(bare) - 3)  # room for a 4-digit seq


_PAD: Final = _padding()


def stamped_data(seq: int) -> bytes:
    """Return ~100 bytes of JSON carrying ``seq`` and the current wall clock in ns."""
    return b'{"seq":%d,"t":%d,"pad":"%s"}' % (seq, time.time_ns(), _PAD)


def client_frame(opcode: int, payload: bytes) -> bytes:
    """Return a masked client-to-server WebSocket frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index & 3] for index, byte in enumerate(payload))
    length = len(payload)
    if length < _LENGTH_16:
        head = bytes((0x80 | opcode, 0x80 | length))
    elif length < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | _LENGTH_16)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | _LENGTH_64)) + length.to_bytes(8, "big")
    return head + mask + masked


class Receipts:
    """Which subscriber received which publication of one phase, and how late."""

    __slots__ = (
        "_complete",
        "_marks",
        "count",
        "duplicates",
        "expected",
        "first_seq",
        "last_ns",
        "latencies_ns",
        "received",
        "strays",
    )

    def __init__(self, subscribers: int, first_seq: int, count: int) -> None:
        self.first_seq = first_seq
        self.count = count
        self.expected = subscribers * count
        self.received = 0
        self.duplicates = 0
        self.strays = 0  # a publication of another phase, arriving late
        self.last_ns = 0
        self.latencies_ns = array("q")
        self._marks = [bytearray(count) for _ in range(subscribers)]
        self._complete = asyncio.Event()
        if self.expected == 0:
            self._complete.set()

    @property
    def missing(self) -> int:
        """Deliveries expected but not (yet) received."""
        return self.expected - self.received

    def record(self, subscriber: int, seq: int, sent_ns: int, now_ns: int) -> None:
        """Count one delivery of publication ``seq`` to ``subscriber``."""
        index = seq - self.first_seq
        if not 0 <= index < self.count:
            self.strays += 1
            return
        marks = self._marks[subscriber]
        if marks[index]:
            self.duplicates += 1
            return
        marks[index] = 1
        self.latencies_ns.append(now_ns - sent_ns)
        self.last_ns = now_ns
        self.received += 1
        if self.received == self.expected:
            self._complete.set()

    async def wait_complete(self, timeout_s: float) -> bool:
        """Wait until every subscriber has every publication; whether that happened."""
        try:
            await asyncio.wait_for(self._complete.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


class Collector:
    """Where subscribers report deliveries: the receipts of the phase under way."""

    __slots__ = ("current",)

    def __init__(self, subscribers: int) -> None:
        self.current = Receipts(subscribers, 0, 0)


class Subscriber(asyncio.Protocol):
    """One WebSocket subscriber: handshake, optional subscribe command, then reading."""

    def __init__(
        self, index: int, collector: Collector, request: bytes, subscribe: bytes | None
    ) -> None:
        self._index = index
        self._collector = collector
        self._request = request
        self._subscribe = subscribe
        self._upgraded = False
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(f"connection lost: {exc}")

    def close(self) -> None:
        """Send a normal close frame and close the socket."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(client_frame(_OP_CLOSE, _CLOSE_NORMAL))
            self._transport.close()

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"subscriber {self._index}: {reason}"))

    def data_received(self, data: bytes) -> None:
        now_ns = time.time_ns()
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        start = 0
        if not self._upgraded:
            start = self._read_handshake(data)
            if start < 0:
                self._buffer = data
                return
        end = self._read_frames(data, start, now_ns)
        if end < len(data):
            self._buffer = data[end:]

    def _read_handshake(self, data: bytes) -> int:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return -1
        if not data.startswith(b"HTTP/1.1 101"):
            status = data.split(b"\r\n", 1)[0]
            self._fail(f"handshake refused: {status!r}")
            return len(data)
        self._upgraded = True
        self._on_upgraded()
        return end + 4

    def _on_upgraded(self) -> None:
        """Subscribe if there is a command for it; otherwise the upgrade made it ready."""
        if self._subscribe is None:
            self.ready.set_result(None)
        else:
            self.send_text(self._subscribe)

    def send_text(self, payload: bytes) -> None:
        """Send ``payload`` in one text frame."""
        assert self._transport is not None
        self._transport.write(client_frame(_OP_TEXT, payload))

    def _read_frames(self, data: bytes, pos: int, now_ns: int) -> int:
        size = len(data)
        while size - pos >= 2:
            length = data[pos + 1] & 0x7F
            head = _HEAD_BYTES.get(length, 2)
            if size - pos < head:
                break
            if head > 2:
                length = int.from_bytes(data[pos + 2 : pos + head], "big")
            end = pos + head + length
            if end > size:
                break
            opcode = data[pos] & 0x0F
            if opcode == _OP_TEXT:
                self._on_text(data, pos + head, end, now_ns)
            elif opcode == _OP_PING:
                assert self._transport is not None
                self._transport.write(client_frame(_OP_PONG, data[pos + head : end]))
            elif opcode == _OP_CLOSE:
                self._fail("closed by the server")
            pos = end
        return pos

    def _on_text(self, data: bytes, start: int, end: int, now_ns: int) -> None:
        stamp = _STAMP.search(data, start, end)
        if stamp is not None:
            seq, sent_ns = stamp.groups()
            self._collector.current.record(self._index, int(seq), int(sent_ns), now_ns)
        elif not self.ready.done() and data.startswith(b'{"id":', start):
            if b'"error"' in data[start:end]:
                self._fail(f"subscribe refused: {data[start:end]!r}")
            else:
                self.ready.set_result(None)


def upgrade_request(host: str, port: int, path: str) -> bytes:
    """Return the HTTP/1.1 WebSocket opening handshake for ``path``."""
    return (
        b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
        % (path.encode(), host.encode(), port, _WS_KEY)
    )


async def connect_subscribers(
    host: str,
    port: int,
    count: int,
    collector: Collector,
    *,
    subscribe: bytes | None,
    concurrency: int = 100,
    timeout_s: float = 60.0,
) -> list[Subscriber]:
    """Open ``count`` subscribers, at most ``concurrency`` handshakes at a time."""
    loop = asyncio.get_running_loop()
    request = upgrade_request(host, port, "/ws")
    gate = asyncio.Semaphore(concurrency)

    async def open_one(index: int) -> Subscriber:
        async with gate:
            _, subscriber = await loop.create_connection(
                lambda: Subscriber(index, collector, request, subscribe), host, port
            )
            await subscriber.ready
            return subscriber

    async with asyncio.timeout(timeout_s):
        return list(await asyncio.gather(*(open_one(index) for index in range(count))))


class HttpPublisher:
    """Publishes over one keep-alive HTTP/1.1 connection, one request at a time.

    A server closes a keep-alive connection left idle (tidings' native server after
    5 s): one closed while the caller did something else (10,000 clients connecting) is
    opened again before the next request, which is safe, as the server closed it with
    no request in flight. One closed during a request still fails: that publication
    may or may not have been made."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
        address: tuple[str, int],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._head = head
        self._address = address
        self.reopened = 0

    @classmethod
    async def open(cls, host: str, port: int, path: str) -> HttpPublisher:
        """Connect to ``host:port``; each ``post`` goes to ``path``."""
        reader, writer = await asyncio.open_connection(host, port)
        head = b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n" % (
            path.encode(),
            host.encode(),
            port,
        )
        return cls(reader, writer, head, (host, port))

    async def post(self, body: bytes) -> None:
        """Send ``body`` and read the whole answer; raise unless its status is 2xx."""
        if self._reader.at_eof() or self._writer.is_closing():
            self._writer.close()
            self._reader, self._writer = await asyncio.open_connection(*self._address)
            self.reopened += 1
        async with asyncio.timeout(POST_TIMEOUT_S):
            await self._post(body)

    async def _post(self, body: bytes) -> None:
        self._writer.write(b"%sContent-Length: %d\r\n\r\n%s" % (self._head, len(body), body))
        status = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        answer = await self._reader.readexactly(length)
        # Nchan answers a publish with 201 Created or 202 Accepted.
        if not status.startswith(b"HTTP/1.1 2"):
            raise ConnectionError(f"publish failed: {status.strip()!r} {answer[:200]!r}")

    async def close(self) -> None:
        """Close the connection."""
        self._writer.close()
        await self._writer.wait_closed()


async def publish_at_rate(
    publisher: HttpPublisher, wrap: Wrap, seqs: range, rate_per_s: float
) -> None:
    """Publish ``seqs`` on a fixed schedule (publication i at i / rate s), stamped at send.

    A publication whose turn came while the previous one was still in flight goes at
    once; the achieved rate is what the caller measures.
    """
    start_s = time.monotonic()
    for index, seq in enumerate(seqs):
        delay_s = start_s + index / rate_per_s - time.monotonic()
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        await publisher.post(wrap(stamped_data(seq)))


async def publish_burst(publisher: HttpPublisher, wrap: Wrap, seqs: range) -> None:
    """Publish ``seqs`` back to back: each as soon as the previous one was answered."""
    for seq in seqs:
        await publisher.post(wrap(stamped_data(seq)))


class PipelinedPoster(asyncio.Protocol):
    """POSTs one request again and again on one keep-alive connection, ``depth`` in flight.

    HTTP/1.1 pipelining: the next requests are written before the answers to the
    previous ones arrive, so the server always has work queued on the connection and
    the figure is what it can take, not the round trip. Answers are counted, and those
    whose status is not 2xx counted apart; ``stop`` lets the requests in flight finish.
    """

    def __init__(self, request: bytes, depth: int) -> None:
        self._request = request
        self._depth = depth
        self._buffer = b""
        self._in_flight = 0
        self._stopping = False
        self._transport: asyncio.Transport | None = None
        self.answered = 0
        self.failed = 0
        self.last_ns = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(
        cls, host: str, port: int, path: str, body: bytes, depth: int
    ) -> PipelinedPoster:
        """Connect to ``host:port``; ``start`` then POSTs ``body`` to ``path``."""
        request = (
            b"POST %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), host.encode(), port, len(body), body)
        )
        loop = asyncio.get_running_loop()
        _, poster = await loop.create_connection(lambda: cls(request, depth), host, port)
        return poster

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"publisher connection lost: {exc}"))

    def start(self) -> None:
        """Write the first ``depth`` requests."""
        assert self._transport is not None
        self._in_flight = self._depth
        self._transport.write(self._request * self._depth)

    def stop(self) -> None:
        """Write no more requests; ``done`` settles when the last answer is read."""
        self._stopping = True
        if self._in_flight == 0 and not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Close the connection."""
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        pos, answered = self._read_answers(data)
        self._buffer = data[pos:]
        if not answered:
            return
        self.last_ns = time.time_ns()
        self.answered += answered
        self._in_flight -= answered
        if not self._stopping:
            assert self._transport is not None
            self._in_flight += answered
            self._transport.write(self._request * answered)
        elif self._in_flight == 0 and not self.done.done():
            self.done.set_result(None)

    def _read_answers(self, data: bytes) -> tuple[int, int]:
        """Count the complete answers in ``data``; where the first incomplete one starts."""
        pos, answered = 0, 0
        while (end := data.find(b"\r\n\r\n", pos)) >= 0:
            length = _CONTENT_LENGTH.search(data, pos, end + 2)
            stop = end + 4 + (int(length[1]) if length else 0)
            if stop > len(data):
                break
            if data[pos + 9 : pos + 10] != b"2":  # "HTTP/1.1 2xx"
                self.failed += 1
            answered += 1
            pos = stop
        return pos, answered
