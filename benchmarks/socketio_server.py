"""python-socketio 5 on uvicorn, a server under test of the comparison benchmark.

A Socket.IO ``AsyncServer`` (ASGI mode) whose connect handler puts every client of the
default namespace in the room ``loadgen.CHANNEL``; ``POST /publish`` decodes the body
as JSON once and emits it as the event ``pub`` to that room (``sio.emit("pub", data,
room=...)``: the library encodes the packet once and queues it on each client's
Engine.IO socket), the way a Socket.IO application broadcasts. ``GET /subscribers``
counts the room and ``GET /health`` says it is alive. It runs on uvicorn with the same
settings as ``naive_server.py`` (uvloop, httptools, ``websockets-sansio``), so what
differs from the naive loop is Socket.IO's own protocol and bookkeeping.

Run: ``python benchmarks/socketio_server.py --port 8002`` (needs the ``bench`` extra).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

if __package__ in (None, ""):  # run as a script: make the `benchmarks` namespace importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.loadgen import CHANNEL
from benchmarks.naive_server import serve

# No CORS check: the generator sends no Origin. Engine.IO's ping (25 s) is its default.
sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins=[])


async def connect(sid: str, _environ: dict[str, Any]) -> None:
    """Put each new client of the default namespace in the benchmark's room."""
    await sio.enter_room(sid, CHANNEL)


sio.on("connect", connect)  # not the decorator, which is untyped


async def publish(request: Request) -> Response:
    """Emit the body, decoded once, as event ``pub`` to the room."""
    data = json.loads(await request.body())
    await sio.emit("pub", data, room=CHANNEL)
    return JSONResponse({"sent": True})


async def subscribers(_request: Request) -> Response:
    """``{"subscribers": n}``: how many clients are in the room."""
    count = sum(1 for _ in sio.manager.get_participants("/", CHANNEL))
    return JSONResponse({"subscribers": count})


async def health(_request: Request) -> Response:
    """Alive."""
    return JSONResponse({"status": "ok"})


routes = Starlette(
    routes=[
        Route("/publish", publish, methods=["POST"]),
        Route("/subscribers", subscribers, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
    ]
)
app = socketio.ASGIApp(sio, other_asgi_app=routes)


def main() -> None:
    """Serve ``app`` until SIGTERM/SIGINT."""
    serve(app, __doc__.splitlines()[0] if __doc__ else None)


if __name__ == "__main__":
    main()
