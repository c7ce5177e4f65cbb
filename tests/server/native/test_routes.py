"""The native server serves past Starlette exactly what the application's route table
says (server/native/routes.py), and knows no path by name."""

from __future__ import annotations

import json

from tests.server.native.conftest import Served
from tests.support.raw_http import connect, publish_request
from tidings.server.api import NativeHeader
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.native.routes import NativeRoutes


def test_the_app_routes_polls_to_their_door_and_publishes_to_a_batch() -> None:
    routes = TidingsApp(Settings()).native_routes
    assert routes.door_for("GET", b"/poll") is not None
    assert routes.batched_for("POST", b"/api/publish") is not None
    assert routes.door_for("POST", b"/poll") is None
    assert routes.batched_for("GET", b"/api/publish") is None
    assert routes.door_for("GET", b"/sse") is None


def test_without_polling_the_app_gives_no_poll_door() -> None:
    routes = TidingsApp(Settings(transports=("ws", "sse"))).native_routes
    assert routes.door_for("GET", b"/poll") is None


async def test_a_pipelined_run_for_a_batched_route_is_served_by_its_handler(
    served: Served,
) -> None:
    bodies: list[bytes] = []

    async def echo(
        header: NativeHeader, body: bytes, client: tuple[str, int] | None
    ) -> tuple[int, dict[str, str], bytes]:
        bodies.append(body)
        answer = json.dumps({"n": len(bodies), "tag": (header(b"x-tag") or b"").decode()})
        return 200, {"content-type": "application/json"}, answer.encode()

    # A path the ASGI app does not know (it would answer 404): only the table serves it.
    served.server.routes = NativeRoutes(batched={("POST", b"/echo"): echo})
    requests = b"".join(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nX-Tag: t%d\r\nContent-Length: 1\r\n\r\n%d" % (i, i)
        for i in range(3)
    )
    conn = await connect(served.port)
    try:
        await conn.send(requests)
        answers = [await conn.response() for _ in range(3)]
    finally:
        conn.close()
    assert [(status, json.loads(body)) for status, _, body in answers] == [
        (200, {"n": 1, "tag": "t0"}),
        (200, {"n": 2, "tag": "t1"}),
        (200, {"n": 3, "tag": "t2"}),
    ]
    assert bodies == [b"0", b"1", b"2"]


async def test_with_an_empty_table_every_request_goes_through_the_app(served: Served) -> None:
    served.server.routes = NativeRoutes()
    conn = await connect(served.port)
    try:
        await conn.send(publish_request("room:1", {"n": 1}))
        published = await conn.response()
        await conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        unknown = await conn.response()
    finally:
        conn.close()
    assert published[0] == 200, published  # Starlette's route of the app published it
    assert json.loads(published[2])["offset"] == 1
    assert unknown[0] == 404
