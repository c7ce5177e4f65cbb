"""The ring scaling scenario's subscribers: raw WebSocket, SSE and polling clients of one
channel each that follow owner routing (docs/protocol.md §9) and record what they get
in a ``ring_ledger.Tally``.

I/O: each subscriber is one asyncio task holding one TCP connection (a poller: one
keep-alive HTTP/1.1 connection) to a node. Why not the Python client: a thousand of
them must run beside three to four nodes and a publisher on two shared cores, and what
is measured here is the nodes, so each subscriber is a loop of a few reads and a
regular expression-free JSON parse per publication. They still do what the protocol
asks of a client, so that they measure what a real client would see:

- a ``moved`` reply (WebSocket) or a ``307`` (SSE, polling) sends the subscriber to the
  owner at once, resuming with ``since`` set to its position;
- a ``disconnect`` (4503 with ``url``; 1001 of a draining node, with ``delay``) sends it
  to ``url``, or to another node it knows, after the ``delay`` given, else after a
  random 0-200 ms (the Python client's first backoff step);
- a connection lost without a goodbye (a node killed) or refused is retried on the
  next node it knows, after a backoff (full jitter, 0.2 s doubling to 1 s).

A reconnect is counted at the moment the node's schedule let the subscriber come back
(the goodbye's arrival plus its ``delay``), which is what ``ring_move_rate`` and
``drain_rate`` bound; the client's own jitter comes after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, urlsplit

from benchmarks.ring_ledger import Gap, Tally

POLL_INTERVAL_S: Final = 1.0
READ_TIMEOUT_S: Final = 30.0
MOVE_JITTER_S: Final = 0.2
BACKOFF_BASE_S: Final = 0.2
BACKOFF_CAP_S: Final = 1.0
_OP_TEXT: Final = 0x1
_OP_CLOSE: Final = 0x8
_OP_PING: Final = 0x9
_OP_PONG: Final = 0xA

Position = tuple[str, int]


class Refused(Exception):
    """The node answered, but not as a subscriber can use (an error status, a refusal)."""


@dataclass(frozen=True, slots=True)
class Moved:
    """Go to ``url`` (a node's base URL) at once: a ``moved`` reply or a 307."""

    url: str


@dataclass(frozen=True, slots=True)
class Told:
    """The node said goodbye: come back (to ``url``, if given) after ``delay_s``."""

    url: str | None
    delay_s: float | None


def base_url(url: str) -> str:
    """``http://host:port`` of any URL a node gives (``ws://…/ws``, ``http://…/sse?…``)."""
    parts = urlsplit(url)
    scheme = "https" if parts.scheme in ("https", "wss") else "http"
    return f"{scheme}://{parts.netloc}"


def host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None, url
    assert parts.port is not None, url
    return parts.hostname, parts.port


async def read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """An HTTP/1.1 answer's status and headers (names lowercased)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionResetError("connection closed before an answer")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    """A whole (not streamed) body: by ``content-length`` or chunked."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while chunk := await read_chunk(reader):
            parts.append(chunk)
        return b"".join(parts)
    return await reader.readexactly(int(headers.get("content-length", "0")))


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; ``b""`` at its end."""
    size = int((await reader.readline()).split(b";")[0], 16)
    if size == 0:
        await reader.readline()
        return b""
    data = await reader.readexactly(size)
    await reader.readline()
    return data


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 §5.3)."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def _ws_read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (never masked, never fragmented by tidings)."""
    head = await reader.readexactly(2)
    length = head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return head[0] & 0x0F, await reader.readexactly(length)


class Subscriber:
    """One channel, one transport, following its owner from node to node."""

    def __init__(
        self, channel: str, transport: str, seeds: list[str], first: int, rng: random.Random
    ) -> None:
        self.tally = Tally(channel, transport)
        self.channel = channel
        self.transport = transport
        self.node: str | None = None  # where it is subscribed now
        self.live = False
        self.position: Position | None = None
        self.subscribed = asyncio.Event()
        self._seeds = seeds  # the driver's list: it grows as nodes join
        self._next = first
        self._rng = rng
        self._failures = 0

    def _seed(self, avoid: str | None) -> str:
        for _ in range(len(self._seeds)):
            url = self._seeds[self._next % len(self._seeds)]
            self._next += 1
            if url != avoid:
                return url
        return self._seeds[0]

    async def run(self) -> None:
        """Subscribe, and keep subscribed, until cancelled."""
        target = self._seed(None)
        while True:
            try:
                outcome = await self._session(target)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, Refused, ValueError):
                outcome = None
            was_live, self.live = self.live, False
            now = time.monotonic()
            if isinstance(outcome, Moved):
                target = outcome.url
                continue
            if isinstance(outcome, Told):
                self.tally.reconnects.append(now + (outcome.delay_s or 0.0))
                wait_s = outcome.delay_s
                if wait_s is None:
                    wait_s = self._rng.uniform(0, MOVE_JITTER_S)
                target = base_url(outcome.url) if outcome.url else self._seed(target)
                await asyncio.sleep(wait_s)
                continue
            # Lost without a goodbye, or refused: another node, after a backoff. Only a
            # connection that was subscribed and died counts as a reconnect (once,
            # however many tries the way back takes; a poller holds no connection).
            if was_live and self.transport != "poll":
                self.tally.reconnects.append(now)
            self._failures += 1
            cap_s = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (self._failures - 1))
            await asyncio.sleep(self._rng.uniform(0, cap_s))
            target = self._seed(target)

    def _subscribed_at(self, node: str, epoch: str, offset: int, recovered: bool) -> None:
        """A subscription answered at ``node`` with the position ``(epoch, offset)``."""
        if self.position is not None and not recovered:
            since_epoch, since_offset = self.position
            gap = Gap(time.monotonic(), since_epoch, since_offset, epoch, offset)
            self.tally.gaps.append(gap)
        if self.position is None or not recovered:
            self.position = (epoch, offset)
        self.node = node
        self.live = True
        self._failures = 0
        self.subscribed.set()

    def _deliver(self, publication: dict[str, object]) -> None:
        epoch, offset = str(publication["epoch"]), int(str(publication["offset"]))
        data = publication["data"]
        assert isinstance(data, dict), publication
        self.tally.deliver(epoch, offset, int(data["s"]), time.monotonic())
        self.position = (epoch, offset)

    def _since(self) -> str:
        if self.position is None:
            return ""
        epoch, offset = self.position
        return f"&since={quote(epoch)}:{offset}"

    async def _session(self, node: str) -> Moved | Told | None:
        host, port = host_port(node)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5.0)
        try:
            if self.transport == "ws":
                return await self._websocket(node, reader, writer)
            if self.transport == "sse":
                return await self._sse(node, reader, writer)
            return await self._poll(node, reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _websocket(
        self, node: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Moved | Told | None:
        host, port = host_port(node)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (host.encode(), port)
        )
        status, _ = await asyncio.wait_for(read_head(reader), READ_TIMEOUT_S)
        if status != 101:
            raise Refused(f"WebSocket upgrade answered {status}")
        subscribe: dict[str, object] = {"id": 2, "op": "subscribe", "channel": self.channel}
        if self.position is not None:
            subscribe["since"] = {"epoch": self.position[0], "offset": self.position[1]}
        writer.write(_ws_frame(_OP_TEXT, b'{"id":1,"op":"connect"}'))
        writer.write(_ws_frame(_OP_TEXT, json.dumps(subscribe).encode()))
        goodbye: Told | None = None
        while True:
            try:
                opcode, payload = await asyncio.wait_for(_ws_read(reader), READ_TIMEOUT_S)
            except asyncio.IncompleteReadError:
                return goodbye
            if opcode == _OP_PING:
                writer.write(_ws_frame(_OP_PONG, payload))
                continue
            if opcode == _OP_CLOSE:
                return goodbye
            if opcode != _OP_TEXT:
                continue
            frame = json.loads(payload)
            push = frame.get("push")
            if push == "pub":
                self._deliver(frame)
            elif push == "disconnect":
                if frame.get("reconnect"):
                    delay = frame.get("delay")
                    goodbye = Told(frame.get("url"), None if delay is None else delay / 1000)
            elif frame.get("id") == 2:
                if "error" in frame:
                    error = frame["error"]
                    if error.get("code") == "moved":
                        return Moved(base_url(error["url"]))
                    raise Refused(f"subscribe refused: {error}")
                result = frame["result"]
                for publication in result.get("publications", ()):
                    self._deliver(publication)
                recovered = bool(result.get("recovered"))
                self._subscribed_at(node, result["epoch"], result["offset"], recovered)
                if recovered:  # the replay brought it to the answer's position
                    self.position = (result["epoch"], result["offset"])
            elif frame.get("id") == 1 and "error" in frame:
                raise Refused(f"connect refused: {frame['error']}")

    async def _sse(
        self, node: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Moved | Told | None:
        host, port = host_port(node)
        writer.write(
            b"GET /sse?channel=%s%s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n\r\n"
            % (quote(self.channel).encode(), self._since().encode(), host.encode(), port)
        )
        status, headers = await asyncio.wait_for(read_head(reader), READ_TIMEOUT_S)
        if status == 307:
            return Moved(base_url(headers["location"]))
        if status != 200:
            raise Refused(f"SSE answered {status}")
        chunked = headers.get("transfer-encoding", "").lower() == "chunked"
        buffer = b""
        goodbye: Told | None = None
        while True:
            try:
                if chunked:
                    data = await asyncio.wait_for(read_chunk(reader), READ_TIMEOUT_S)
                else:
                    data = await asyncio.wait_for(reader.read(65536), READ_TIMEOUT_S)
            except asyncio.IncompleteReadError:
                return goodbye
            if not data:
                return goodbye
            buffer += data
            while (end := buffer.find(b"\n\n")) >= 0:
                event, buffer = buffer[:end], buffer[end + 2 :]
                goodbye = self._sse_event(node, event) or goodbye

    def _sse_event(self, node: str, event: bytes) -> Told | None:
        kind, data = "message", b""
        for line in event.split(b"\n"):
            if line.startswith(b"event:"):
                kind = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data = line[5:].strip()
        if kind == "pub":
            self._deliver(json.loads(data))
        elif kind == "subscribed":
            position = json.loads(data)["channels"][self.channel]
            recovered = bool(position["recovered"])
            self._subscribed_at(node, position["epoch"], position["offset"], recovered)
        elif kind == "disconnect":
            goodbye = json.loads(data)
            if goodbye.get("reconnect"):
                delay = goodbye.get("delay")
                return Told(goodbye.get("url"), None if delay is None else delay / 1000)
        return None

    async def _poll(
        self, node: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> Moved | Told | None:
        host, port = host_port(node)
        while True:
            writer.write(
                b"GET /poll?channel=%s%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                % (quote(self.channel).encode(), self._since().encode(), host.encode(), port)
            )
            status, headers = await asyncio.wait_for(read_head(reader), READ_TIMEOUT_S)
            body = await read_body(reader, headers)
            if status == 307:
                return Moved(base_url(headers["location"]))
            if status != 200:
                raise Refused(f"poll answered {status}: {body[:200]!r}")
            answer = json.loads(body)
            for publication in answer["publications"]:
                self._deliver(publication)
            position = answer["positions"][self.channel]
            had = self.position
            self._subscribed_at(node, position["epoch"], position["offset"], position["recovered"])
            if had is not None and position["recovered"]:
                self.position = (position["epoch"], position["offset"])
            await asyncio.sleep(POLL_INTERVAL_S)
