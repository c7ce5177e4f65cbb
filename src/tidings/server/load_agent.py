"""HAProxy's agent check: a small TCP port answering one line of this node's load.

I/O: an asyncio server on ``agent_port``. Each connection is answered at once with
``core.load.agent_reply``; what the checker sends (an ``agent-send`` string, which
tidings does not need) is read and dropped until it closes (at most 2 s). While the
node drains, the answer is ``drain``; ``TidingsApp.drain`` waits (a little) until
HAProxy has read it before it moves clients, so their reconnects are not balanced back
to this node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Final

from tidings.core.load import NodeLoad, agent_reply
from tidings.errors import ConfigError

logger = logging.getLogger(__name__)

# A node whose agent was asked nothing for this long is not behind HAProxy (or not
# any more): draining it does not wait for a check that will not come.
AGENT_WATCHED_S: Final = 30.0
# How long a checker may keep the connection after its answer, and what is read of it.
AGENT_LINGER_S: Final = 2.0
READ_CHUNK_BYTES: Final = 4096


class LoadAgent:
    """Answers agent checks on ``host:port`` with the load ``load`` returns."""

    def __init__(self, load: Callable[[], NodeLoad], host: str, port: int) -> None:
        self._load = load
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._drain_heard = asyncio.Event()
        self._last_check_s: float | None = None

    async def start(self) -> None:
        """Listen on the agent port.

        Raises:
            ConfigError: the port cannot be bound (in use, not allowed).
        """
        try:
            # Worker processes sharing the node's port share this one too: each check
            # is answered by one of them, with its own load.
            self._server = await asyncio.start_server(
                self._answer, self.host, self.port, reuse_port=True
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on agent_port {self.host}:{self.port}: "
                f"{os.strerror(exc.errno).lower() if exc.errno else exc}"
            ) from None
        logger.info("answering HAProxy agent checks on %s:%d", self.host, self.port)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        load = self._load()
        self._last_check_s = time.monotonic()
        try:
            writer.write(agent_reply(load))
            writer.write_eof()
            # Read to the checker's close: an ``agent-send`` string left unread would
            # make our close a reset, which may cost HAProxy the reply.
            async with asyncio.timeout(AGENT_LINGER_S):
                while await reader.read(READ_CHUNK_BYTES):
                    pass
        except (OSError, TimeoutError):
            pass  # the checker left first, or lingers: it will ask again
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if load.draining:
            self._drain_heard.set()

    async def wait_drain_heard(self, timeout_s: float) -> bool:
        """Wait until a check has been answered ``drain``, at most ``timeout_s`` (not
        at all if no check came in the last ``AGENT_WATCHED_S``); whether one was."""
        last = self._last_check_s
        if last is None or time.monotonic() - last > AGENT_WATCHED_S:
            return self._drain_heard.is_set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._drain_heard.wait()
        return self._drain_heard.is_set()

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
