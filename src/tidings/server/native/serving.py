"""Serving one connection's pipelined requests in order: the queue behind ``http.py``.

I/O: starts tasks on the connection's loop and writes whole responses to its
transport. The requests ``http.HttpConnection`` has read wait in its queue
(``_requests``, the first being served); ``serve_next`` serves the oldest, through one
of three ways the application's route table (``routes.NativeRoutes``) decides: a
request with a *door* (``GET /poll``) is answered or parked at once with no task (a
``PollExchange``); a run of requests for a *batched* handler (``POST /api/publish``)
is served by one task whose answers leave in one write; anything else runs the ASGI
application in one task (responses written by ``response.ResponseWriter``). A request
is done when its response is complete; then the next one is served, or the keep-alive
deadline starts. A connection whose response did not complete cleanly is closed,
never reused.

These are functions of the connection, not a second object beside it: every idle
connection would pay for one (DESIGN.md: idle costs memory only). They are the
connection's serving half, and so use its private state; nothing else does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from tidings.server.native import keep_alive
from tidings.server.native.poll_exchange import PollExchange
from tidings.server.native.response import ResponseWriter, whole_responses
from tidings.server.native.scope import http_scope

if TYPE_CHECKING:
    from tidings.server.api import NativePublish
    from tidings.server.native.http import HttpConnection
    from tidings.server.native.request import Request

logger = logging.getLogger(__name__)

# Pipelined requests read ahead of the one being served before reading pauses; also the
# longest run of batched requests answered in one write.
MAX_PIPELINED: Final = 16


def serve_next(conn: HttpConnection) -> None:
    """Serve the oldest waiting request, or, with none left, write a pending refusal or
    start the keep-alive deadline."""
    if conn.closed:
        conn._cycle = None
        return
    if not conn._requests:
        conn._cycle = None
        conn.update_reading()  # a request still arriving may have paused it
        if conn._refusal is not None:
            conn._write_refusal(conn._refusal)
        else:
            keep_alive.arm(conn)
        return
    if conn._write_paused:
        # The client is not reading: its next answer waits (resume_writing serves it).
        conn._cycle = None
        return
    conn.update_reading()
    request = conn._requests[0]
    routes = conn._server.routes
    door = routes.door_for(request.method, request.raw_path)
    if door is not None:
        # Answered, parked or handed back at once: most polls need no task at all.
        exchange = conn._cycle = PollExchange(conn, request)
        door(exchange)
        return
    batched = routes.batched_for(request.method, request.raw_path)
    if batched is not None:
        conn._cycle = conn._loop.create_task(_serve_batched(conn, batched))
        return
    serve_through_app(conn, request)


def _dequeue(conn: HttpConnection) -> None:
    """Forget the request just answered."""
    conn._queued_bytes -= conn._requests[0].size
    del conn._requests[0]


async def _serve_batched(conn: HttpConnection, handler: NativePublish) -> None:
    """Serve the run of requests for ``handler`` (``POST /api/publish``) at the head of
    the queue in one task, without Starlette, and write their answers together: a
    pipelining publisher's requests cost one task and one write per run, not one each."""
    routes = conn._server.routes
    answers: list[bytes] = []
    request: Request | None = None
    try:
        while (
            conn._requests
            and routes.batched_for(conn._requests[0].method, conn._requests[0].raw_path) is handler
            and not conn.closed
        ):
            request = conn._requests[0]
            status, headers, body = await handler(request.header, request.body, conn._client)
            close = not request.keep_alive or conn._server.stopping
            answers.append(whole_responses.of(status, headers, body, close=close, head=False))
            _log_access(conn, request, status)
            if close or len(answers) >= MAX_PIPELINED:
                break
            _dequeue(conn)
            request = None
    except Exception:
        logger.exception("the native publish failed")
        conn.abort()
        return
    finally:
        if answers and conn.transport is not None and not conn.closed:
            conn.transport.write(b"".join(answers))
    if request is not None:
        _request_done(conn, request, complete=True)  # the last of the run: close, or go on
        return
    conn._cycle = None
    serve_next(conn)


def serve_through_app(conn: HttpConnection, request: Request) -> None:
    """Serve ``request`` with the ASGI application (a door handing it back)."""
    conn._cycle = conn._loop.create_task(_serve(conn, request))


async def _serve(conn: HttpConnection, request: Request) -> None:
    assert conn.transport is not None
    response = conn._response = ResponseWriter(conn, request)
    try:
        await conn._server.asgi(_http_scope(conn, request), response.receive, response.send)
    except Exception:
        if conn.closed:
            # The client left before its answer was written (an abandoned long
            # poll): routine, not a failure of ours.
            logger.debug("client left before %s %r was answered", request.method, request.path)
        else:
            logger.exception("the application failed on %s %r", request.method, request.path)
            if not response.started:
                response.write_error(HTTPStatus.INTERNAL_SERVER_ERROR)
    finally:
        conn._response = None
    _request_done(conn, request, complete=response.complete)


def _request_done(conn: HttpConnection, request: Request, *, complete: bool) -> None:
    """After a response: serve the next pipelined request, or close."""
    if not complete or not request.keep_alive or conn._server.stopping:
        conn.close()
        return
    _dequeue(conn)
    serve_next(conn)


def respond_now(
    conn: HttpConnection, request: Request, status: int, headers: Mapping[str, str], body: bytes
) -> None:
    """Write a whole response to ``request`` at once (no ASGI cycle)."""
    if conn.closed or conn.transport is None:
        return
    close = not request.keep_alive or conn._server.stopping
    wire = whole_responses.of(status, headers, body, close=close, head=request.method == "HEAD")
    conn.transport.write(wire)
    _log_access(conn, request, status)
    _request_done(conn, request, complete=True)


def _log_access(conn: HttpConnection, request: Request, status: int) -> None:
    """Log a request answered without the ASGI app (which logs its own), if asked."""
    log = conn._server.access_log
    if log is not None:
        log.request(
            conn._client, request.method, request.path, request.query_string,
            status=status, started_s=request.received_s,
        )  # fmt: skip


def _http_scope(conn: HttpConnection, request: Request) -> dict[str, Any]:
    response = conn._response
    assert response is not None
    return http_scope(request, conn._local, conn._client, response.stream_outbound)
