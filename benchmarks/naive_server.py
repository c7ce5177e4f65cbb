"""The baseline of the fan-out benchmark: the fan-out most people would write first.

A Starlette app on uvicorn: ``/ws`` accepts a WebSocket and keeps it in a set;
``POST /publish`` sends the request body as a text frame to every socket in turn
(``for ws in sockets: await ws.send_text(body)``), then puts it on the queue of every
``GET /sse`` stream, each of which writes what it takes off its queue as one
``data:`` event. No channels, no history, no offsets, no bound on a queue: it is the
floor that tidings' extra guarantees are paid on top of. uvicorn runs with the
settings ``tidings serve`` uses (uvloop, httptools, the ``websockets-sansio``
WebSocket implementation, the same ping interval), so the difference measured is the
application, not the server; ``serve`` runs another benchmark app the same way.

Run: ``python benchmarks/naive_server.py --port 8001``.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp
from starlette.websockets import WebSocket, WebSocketDisconnect

# The same as tidings.server.runner, so both servers send the same pings.
WS_PING_INTERVAL_S = 20.0
WS_PING_TIMEOUT_S = 20.0

sockets: set[WebSocket] = set()
streams: set[asyncio.Queue[str]] = set()


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Keep the socket in ``sockets`` until the client leaves."""
    await websocket.accept()
    sockets.add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        sockets.discard(websocket)


async def sse_endpoint(_request: Request) -> Response:
    """An event stream writing each body put on its queue as one ``data:`` event."""
    queue: asyncio.Queue[str] = asyncio.Queue()

    async def events() -> AsyncIterator[str]:
        streams.add(queue)
        try:
            yield ": subscribed\n\n"  # sends the head at once
            while True:
                yield f"data: {await queue.get()}\n\n"
        finally:  # Starlette cancels the stream when the client leaves
            streams.discard(queue)

    return StreamingResponse(events(), media_type="text/event-stream")


async def publish(request: Request) -> Response:
    """Send the body to every socket, one ``send_text`` after the other, then queue it
    for every event stream."""
    text = (await request.body()).decode()
    # Snapshots, so a client leaving mid-loop does not break the iteration.
    for websocket in list(sockets):
        await websocket.send_text(text)
    for queue in list(streams):
        queue.put_nowait(text)
    return JSONResponse({"sent": len(sockets) + len(streams)})


async def subscribers(_request: Request) -> Response:
    """``{"subscribers": n}``: how many sockets and event streams are connected."""
    return JSONResponse({"subscribers": len(sockets) + len(streams)})


async def health(_request: Request) -> Response:
    """Alive."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/sse", sse_endpoint, methods=["GET"]),
        Route("/publish", publish, methods=["POST"]),
        Route("/subscribers", subscribers, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
)


def _raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(served: ASGIApp, description: str | None) -> None:
    """Serve ``served`` on uvicorn with tidings' settings until SIGTERM/SIGINT.

    The command line: ``--host``, ``--port``, ``--log-level``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    options = parser.parse_args()
    _raise_open_files_limit()
    uvicorn.run(
        served,
        host=options.host,
        port=options.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_ping_interval=WS_PING_INTERVAL_S,
        ws_ping_timeout=WS_PING_TIMEOUT_S,
        log_level=options.log_level,
        server_header=False,
    )


def main() -> None:
    """Serve ``app`` until SIGTERM/SIGINT."""
    serve(app, __doc__.splitlines()[0] if __doc__ else None)


if __name__ == "__main__":
    main()
