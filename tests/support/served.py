"""A tidings node served in the test's own process, on a real socket, by the backend the
suite runs on (native by default, uvicorn with ``TIDINGS_TEST_SERVER_BACKEND=uvicorn``):
for tests that must reach into the node (a fake placement, its sessions), which a
``tidings serve`` process cannot take.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn

from tests.support.server import SERVER_BACKEND_VARIABLE
from tidings.server.app import TidingsApp
from tidings.server.native.server import NativeServer


@asynccontextmanager
async def served(app: TidingsApp) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port; yield its base URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if os.environ.get(SERVER_BACKEND_VARIABLE) == "uvicorn":
        config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="websockets-sansio")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve(sockets=[listener]))

        def request_stop() -> None:
            server.should_exit = True
    else:
        native = NativeServer(app)
        serving = asyncio.create_task(native.serve(listener, handle_signals=False))
        request_stop = native.request_stop
    try:
        # The socket listens already: requests wait in its backlog until the node is up.
        yield f"http://127.0.0.1:{port}"
    finally:
        request_stop()
        await serving
        listener.close()
