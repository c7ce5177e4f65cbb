"""tidings mounted inside an existing Starlette application.

Run it with::

    .venv/bin/uvicorn examples.embedded_starlette:app --port 8000

then subscribe (``tidings subscribe orders:feed --server http://127.0.0.1:8000/realtime``)
and place an order: ``curl -X POST 'http://127.0.0.1:8000/orders?item=tea'``. The
application publishes in-process (no HTTP hop) with ``realtime.publish``; browsers
connect to ``ws://127.0.0.1:8000/realtime/ws``. FastAPI works the same way
(``app.mount("/realtime", realtime)``, ``FastAPI(lifespan=realtime.lifespan)``).
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from tidings import Settings, TidingsApp

realtime = TidingsApp(Settings())


async def place_order(request: Request) -> JSONResponse:
    """Record an order (here: just its item) and tell every subscriber of orders:feed."""
    order = {"item": request.query_params.get("item", "nothing")}
    position = await realtime.publish("orders:feed", order)
    return JSONResponse({"order": order, "offset": position.offset})


app = Starlette(
    routes=[
        Route("/orders", place_order, methods=["POST"]),
        Mount("/realtime", app=realtime),
    ],
    # tidings starts and stops (draining its clients) with the host application.
    lifespan=realtime.lifespan,
)
