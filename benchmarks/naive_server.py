"""The baseline of the fan-out benchmark: the fan-out most people would write first.

A Starlette app on uvicorn: ``/ws`` accepts a WebSocket and keeps it in a set;
``POST /publish`` sends the request body as a text frame to every socket in turn
(``for ws in sockets: await ws.send_text(body)``). No channels, no history, no
offsets, no outbound queue: it is the floor that tidings' extra guarantees are paid
on top of. uvicorn runs with the settings ``tidings serve`` uses (uvloop, httptools,
the ``websockets-sansio`` WebSocket implementation, the same ping interval), so the
difference measured is the application, not the server.

Run: ``python benchmarks/naive_server.py --port 8001``.
"""

from __future__ import annotations

import argparse
import resource

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

# The same as tidings.server.runner, so both servers send the same pings.
WS_PING_INTERVAL_S = 20.0
WS_PING_TIMEOUT_S = 20.0

sockets: set[WebSocket] = set()


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


async def publish(request: Request) -> Response:
    """Send the body to every socket, one ``send_text`` after the other."""
    text = (await request.body()).decode()
    # A snapshot, so a client leaving mid-loop does not break the iteration.
    for websocket in list(sockets):
        await websocket.send_text(text)
    return JSONResponse({"sent": len(sockets)})


async def subscribers(_request: Request) -> Response:
    """``{"subscribers": n}``: how many sockets are connected."""
    return JSONResponse({"subscribers": len(sockets)})


async def health(_request: Request) -> Response:
    """Alive."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        WebSocketRoute("/ws", websocket_endpoint),
        Route("/publish", publish, methods=["POST"]),
        Route("/subscribers", subscribers, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
)


def _raise_open_files_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    """Serve ``app`` until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-level", default="warning")
    options = parser.parse_args()
    _raise_open_files_limit()
    uvicorn.run(
        app,
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


if __name__ == "__main__":
    main()
