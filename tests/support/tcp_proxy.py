"""A TCP proxy of the tests' own, to put a faulty link between a node and a service.

It listens on a free loopback port and forwards every connection to a target, both
ways. On demand it *cuts* (closes every connection open now, as a broken link does),
*stalls* (stops forwarding silently: no error, no close, what
arrives is held, as a black-holed route does; TCP's own buffers then push back on the
sender) and *resumes* (what was held goes on, in order, as after a route heals), and
it can *delay* every chunk by a fixed time (a slow link).

It runs its own asyncio loop in a thread, so it keeps forwarding while the test's
thread blocks (starting a server process, say). ``stall``, ``resume`` and
``set_delay`` return once the proxy applies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, Final, Self, TypeVar

CHUNK_BYTES: Final = 65_536
START_TIMEOUT_S: Final = 10.0

T = TypeVar("T")


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``; see the module docstring."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing: asyncio.Event | None = None
        self._delay_s = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``: the proxy as a Redis broker URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Self:
        """Listen on a free port and start forwarding."""
        self._thread.start()
        self._call(self._listen())
        return self

    def stall(self) -> None:
        """Stop forwarding, silently, in both directions of every connection."""
        self._call(self._set_flowing(flowing=False))

    def resume(self) -> None:
        """Forward again, starting with what was held."""
        self._call(self._set_flowing(flowing=True))

    def cut(self) -> None:
        """Close every connection open now, both ways (a link that breaks); the proxy
        goes on listening, so new connections are made (and held, while stalled)."""
        self._call(self._cut())

    def set_delay(self, delay_s: float) -> None:
        """Hold every chunk ``delay_s`` after it arrived before forwarding it."""
        self._call(self._set_delay(delay_s))

    def close(self) -> None:
        """Close every connection and the listener, and stop the thread."""
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- in the proxy's thread ---------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return future.result(START_TIMEOUT_S)

    async def _listen(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        sock: socket.socket = self._server.sockets[0]
        self.port = sock.getsockname()[1]

    async def _set_flowing(self, *, flowing: bool) -> None:
        assert self._flowing is not None
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _set_delay(self, delay_s: float) -> None:
        self._delay_s = delay_s

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, target_writer))
        for source, sink in ((reader, target_writer), (target_reader, writer)):
            task = asyncio.get_running_loop().create_task(self._pump(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        """Forward one direction: each chunk waits for its delay and for the link to flow.
        Reading stops while a chunk waits, so the kernel's buffers push back."""
        flowing = self._flowing
        assert flowing is not None
        try:
            while chunk := await source.read(CHUNK_BYTES):
                arrived = time.monotonic()
                await flowing.wait()
                wait_s = arrived + self._delay_s - time.monotonic()
                if wait_s > 0:
                    await asyncio.sleep(wait_s)
                    await flowing.wait()  # a stall that began meanwhile holds it too
                sink.write(chunk)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()

    async def _cut(self) -> None:
        writers, self._writers = list(self._writers), set()
        for writer in writers:
            writer.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
