"""Where a stream connection's bytes go: the ``Outbound`` plug point and its ASGI form.

A server backend chooses how a connection's chunks (command replies, pushes, events)
leave the process. Under ASGI the only way out is awaiting ``send``, so
``QueuedOutbound`` keeps a deque drained by one writer task per connection. tidings'
native server (``tidings.server.native``) instead offers, through the ASGI scope
extension ``DIRECT_OUTBOUND``, an outbound that frames each chunk and writes it to the
socket at once: no task, no wake-up, no future per delivery (DESIGN.md, "nothing on
the fan-out path allocates per subscriber beyond the write itself").

I/O: ``QueuedOutbound`` awaits the transport's write and end callables.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

from starlette.types import Scope

# The ASGI scope extension under which a server offers direct outbounds: its value is a
# callable that returns the ``Outbound`` of the scope's connection.
DIRECT_OUTBOUND: Final = "tidings.direct_outbound"
# How long a closing connection may take to flush its queue before it is cut.
CLOSE_FLUSH_TIMEOUT_S: Final = 5.0


class Outbound(Protocol):
    """The outbound side of one connection. Nothing here blocks the caller.

    Guarantees: chunks leave in ``put`` order; ``finish`` sends its goodbye after every
    chunk put before it and then ends the connection with the code; nothing put after
    ``finish`` is sent.
    """

    @property
    def pending_bytes(self) -> int:
        """Bytes put but not yet handed to the kernel (the slow-consumer measure)."""
        ...

    def put(self, chunk: str) -> None:
        """Send ``chunk`` after everything put before it."""
        ...

    def discard_pending(self) -> None:
        """Drop what is still waiting, where it can be dropped (a slow consumer's queue)."""
        ...

    def finish(self, goodbye: str, code: int, reason: str) -> None:
        """Send ``goodbye`` after what is pending, then end the connection with ``code``."""
        ...

    def end_silently(self) -> None:
        """End now without a goodbye: the client is gone, nobody would read it."""
        ...

    async def wait_sent(self) -> None:
        """Return once what was put so far has mostly left (reader backpressure)."""
        ...

    async def run(self) -> None:
        """Serve the outbound until it has ended (the writer task, where there is one)."""
        ...

    async def stop(self, *, client_left: bool) -> None:
        """Stop at the connection's end: flush a finish in progress (bounded) unless the
        client left, in which case nothing more is said."""
        ...


def direct_outbound(scope: Scope) -> Outbound | None:
    """Return the direct outbound the server offers for ``scope``'s connection, if any."""
    factory: Callable[[], Outbound] | None = scope.get("extensions", {}).get(DIRECT_OUTBOUND)
    return None if factory is None else factory()


class QueuedOutbound:
    """Chunks queued in memory and written by one task through async callables (ASGI).

    Bursts coalesce: the writer takes everything queued in one call of ``write``.
    """

    __slots__ = ("_end", "_finish", "_pending", "_queue", "_taken", "_wakeup", "_write", "_writer")

    def __init__(
        self,
        write: Callable[[list[str]], Awaitable[None]],
        end: Callable[[int, str], Awaitable[None]],
    ) -> None:
        self._write = write
        self._end = end
        self._queue: deque[str] = deque()
        self._pending = 0
        self._wakeup = asyncio.Event()
        self._taken = asyncio.Event()
        self._finish: tuple[int, str] | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def put(self, chunk: str) -> None:
        if self._finish is not None:
            return
        self._queue.append(chunk)
        self._pending += len(chunk)
        self._wakeup.set()

    def discard_pending(self) -> None:
        self._queue.clear()
        self._pending = 0

    def finish(self, goodbye: str, code: int, reason: str) -> None:
        if self._finish is not None:
            return
        self._queue.append(goodbye)
        self._finish = (code, reason)
        self._wakeup.set()
        self._taken.set()  # a reader held in ``wait_sent`` goes on: nothing more is sent

    def end_silently(self) -> None:
        self._queue.clear()
        self._pending = 0
        if self._finish is None:
            self._finish = (0, "client left")
        self._wakeup.set()

    async def wait_sent(self) -> None:
        writer = self._writer
        while self._queue and self._finish is None and writer is not None and not writer.done():
            self._taken.clear()
            await self._taken.wait()

    def start(self) -> None:
        """Start the writer task (the handler task reads commands, or writes a stream's
        opening replay, meanwhile); ``run`` then waits for it."""
        self._writer = asyncio.create_task(self._run_writer())

    async def run(self) -> None:
        if self._writer is None:
            await self._run_writer()
        else:
            await self._writer

    async def _run_writer(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._finish is not None:
                        break
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                chunks = list(queue)
                queue.clear()
                self._pending = 0
                self._taken.set()
                await self._write(chunks)
            code, reason = self._finish
            if code:
                await self._end(code, reason)
        except OSError:
            return  # the client is gone (uvicorn's ClientDisconnected); the reader sees it
        finally:
            self._taken.set()  # a reader held in ``wait_sent`` must not wait for a writer gone

    async def stop(self, *, client_left: bool) -> None:
        writer = self._writer
        if writer is None:
            return
        if client_left or self._finish is None:
            writer.cancel()  # the client ended the connection: nothing more to say
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(writer, timeout=CLOSE_FLUSH_TIMEOUT_S)
