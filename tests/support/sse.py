"""A raw Server-Sent Events reader for end-to-end tests, parsing exactly as browsers do.

``SseParser`` is pure: it implements the HTML standard's "event stream interpretation"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation)
line by line: lines end at CRLF, LF or CR (and nothing else: U+2028 is text); a line
starting with ``:`` is a comment; ``field: value`` loses one space after the colon;
``data`` lines join with LF; ``id`` sets the last event ID unless it holds NUL;
``retry`` counts only when all ASCII digits; a blank line dispatches, and an event with
an empty data buffer is not dispatched; an unfinished event at the end is dropped.
Every raw line is recorded, so tests can check the framing itself (one ``data:`` line
per event), not only what a browser would make of it.

``SseStream`` feeds it from an httpx streaming response on a reader task and queues
what it parses, so a test awaits exactly the next event. It is built on httpx directly
(not on ``tidings.client``) so the tests check the wire.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import httpx

DEFAULT_TIMEOUT_S: Final = 10.0
_END_OF_LINE: Final = re.compile(r"\r\n|\r|\n")
_BOM: Final = "\ufeff"


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event, as an ``EventSource`` would deliver it."""

    type: str
    data: str
    last_event_id: str
    lines: tuple[str, ...]
    """The raw lines of the event's block (fields and comments), without terminators."""

    def json(self) -> Any:
        """Return ``data`` decoded as JSON."""
        return json.loads(self.data)

    def field_lines(self, name: str) -> list[str]:
        """Return the raw lines of the block that set field ``name``."""
        return [line for line in self.lines if _field(line)[0] == name]


@dataclass(frozen=True, slots=True)
class SseComment:
    """A comment line (``: text``); ``text`` is everything after the colon."""

    text: str


SseItem = SseEvent | SseComment


def _field(line: str) -> tuple[str, str]:
    """Split a non-empty, non-comment line into field name and value."""
    name, colon, value = line.partition(":")
    if colon and value.startswith(" "):
        value = value[1:]
    return name, value


class SseParser:
    """The event-stream interpretation of the HTML standard, fed text incrementally."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        """Every raw line received so far, in order."""
        self.retry_ms: int | None = None
        self.last_event_id = ""
        self._buffer = ""
        self._started = False
        self._skip_lf = False  # the previous chunk ended in CR: an LF now is its CRLF
        self._data: list[str] = []
        self._has_data = False
        self._event_type = ""
        self._id_buffer = ""
        self._block: list[str] = []

    def feed(self, text: str) -> list[SseItem]:
        """Parse more decoded text; return the events and comments it completed."""
        if not self._started and text:
            self._started = True
            text = text.removeprefix(_BOM)
        if self._skip_lf and text:
            self._skip_lf = False
            text = text.removeprefix("\n")
        buffer = self._buffer + text
        items: list[SseItem] = []
        start = 0
        for match in _END_OF_LINE.finditer(buffer):
            item = self._line(buffer[start : match.start()])
            if item is not None:
                items.append(item)
            start = match.end()
        if start == len(buffer) and buffer.endswith("\r"):
            self._skip_lf = True
        self._buffer = buffer[start:]
        return items

    def _line(self, line: str) -> SseItem | None:
        self.lines.append(line)
        if not line:
            return self._dispatch()
        self._block.append(line)
        if line.startswith(":"):
            return SseComment(line[1:])
        name, value = _field(line)
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)  # "".isdigit() is False: an empty retry is ignored
        # any other field is ignored
        return None

    def _dispatch(self) -> SseEvent | None:
        self.last_event_id = self._id_buffer
        block, self._block = tuple(self._block), []
        event_type, self._event_type = self._event_type, ""
        data, self._data = "\n".join(self._data), []
        has_data, self._has_data = self._has_data, False
        if not has_data:
            return None
        return SseEvent(event_type or "message", data, self.last_event_id, block)


class StreamEnded(Exception):
    """The server ended the stream (or the connection broke) before the awaited item."""


class SseStream:
    """One open ``/sse`` response, parsed on a reader task."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.parser = SseParser()
        self.events: list[SseEvent] = []
        """Every event received so far, in order."""
        self.comments: list[SseComment] = []
        self.ended = asyncio.Event()
        self.error: BaseException | None = None
        self._items: asyncio.Queue[SseItem | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        if response.status_code == 200:
            self._reader = asyncio.create_task(self._read())
        else:  # an error answer is a JSON body, not a stream: nothing to parse
            self.ended.set()
            self._items.put_nowait(None)

    async def _read(self) -> None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            async for chunk in self.response.aiter_bytes():
                for item in self.parser.feed(decoder.decode(chunk)):
                    if isinstance(item, SseEvent):
                        self.events.append(item)
                    else:
                        self.comments.append(item)
                    self._items.put_nowait(item)
        except httpx.HTTPError as exc:  # a broken stream: tests see it as the end
            self.error = exc
        finally:
            self.ended.set()
            self._items.put_nowait(None)

    async def next_item(self, wait_s: float = DEFAULT_TIMEOUT_S) -> SseItem:
        """Return the next event or comment.

        Raises:
            StreamEnded: the stream ended first.
        """
        item = await asyncio.wait_for(self._items.get(), wait_s)
        if item is None:
            self._items.put_nowait(None)  # stay ended for later calls
            raise StreamEnded(f"the stream ended ({self.error!r})")
        return item

    async def next_event(self, wait_s: float = DEFAULT_TIMEOUT_S) -> SseEvent:
        """Return the next event, skipping comments (they stay in ``comments``)."""
        while True:
            item = await self.next_item(wait_s)
            if isinstance(item, SseEvent):
                return item

    async def next_comment(self, wait_s: float = DEFAULT_TIMEOUT_S) -> SseComment:
        """Return the next comment, skipping events (they stay in ``events``)."""
        while True:
            item = await self.next_item(wait_s)
            if isinstance(item, SseComment):
                return item

    async def publications(
        self, count: int, wait_s: float = DEFAULT_TIMEOUT_S
    ) -> list[dict[str, Any]]:
        """Return the data of the next ``count`` events, which must all be ``pub``."""
        found: list[dict[str, Any]] = []
        for _ in range(count):
            event = await self.next_event(wait_s)
            assert event.type == "pub", f"expected a pub event, got {event}"
            found.append(event.json())
        return found

    async def pub_events(self, count: int, wait_s: float = DEFAULT_TIMEOUT_S) -> list[SseEvent]:
        """Return the next ``count`` events, which must all be ``pub``."""
        found: list[SseEvent] = []
        for _ in range(count):
            event = await self.next_event(wait_s)
            assert event.type == "pub", f"expected a pub event, got {event}"
            found.append(event)
        return found

    async def rest(self, wait_s: float = DEFAULT_TIMEOUT_S) -> list[SseEvent]:
        """Return every event until the server ends the stream."""
        found: list[SseEvent] = []
        with contextlib.suppress(StreamEnded):
            while True:
                found.append(await self.next_event(wait_s))
        return found

    async def close(self) -> None:
        """Stop reading (the response is closed by ``sse_stream``)."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@asynccontextmanager
async def sse_stream(
    http: httpx.AsyncClient,
    params: Mapping[str, str | Sequence[str]],
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[SseStream]:
    """Open ``GET /sse`` with ``params`` and yield its ``SseStream``, whatever the status.

    On an error answer (not 200) nothing is parsed: read the body with
    ``await stream.response.aread()``.
    """
    async with http.stream("GET", "/sse", params=params, headers=headers) as response:
        stream = SseStream(response)
        try:
            yield stream
        finally:
            await stream.close()
