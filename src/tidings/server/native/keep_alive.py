"""The keep-alive deadline of one native HTTP connection: between requests an idle
connection is closed, and a request must arrive whole soon after its first byte.

I/O: a ``Deadline`` on the server's shared timer (``transports.deadlines``: one timer
per grain for all connections, not one each), and closing the connection or refusing
its request with 408 when it expires. The deadline is armed when a connection opens and
whenever it has answered every request (``serving.serve_next``), stays armed while a
request arrives (the parser's callbacks note when its first byte came, in
``_message_started_s``), and is cancelled once a request is complete, the connection is
upgraded or refused, or it is lost.

These are functions of the connection, not a second object beside it, for the reason
``serving.py`` gives: every idle connection would pay for one (DESIGN.md: idle costs
memory only). They are the only users of ``_keep_alive_timer`` besides a refused
connection's linger (``http.HttpConnection._write_refusal``), which reuses its slot.
"""

from __future__ import annotations

from functools import partial
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from tidings.server.native.http import HttpConnection

KEEP_ALIVE_TIMEOUT_S: Final = 5.0
# A request must arrive whole within this time of its first byte (against slow senders).
REQUEST_TIMEOUT_S: Final = 60.0


def arm(conn: HttpConnection) -> None:
    """Start the keep-alive deadline of a connection that has nothing left to answer (a
    stopping server closes it instead)."""
    if conn.closed or conn._websocket is not None:
        return
    if conn._server.stopping:
        conn.close()
        return
    cancel(conn)
    # It stays armed while a request arrives, and is cancelled once one is complete.
    conn._keep_alive_timer = conn._server.deadlines.call_after(
        KEEP_ALIVE_TIMEOUT_S, partial(_idle_too_long, conn)
    )


def cancel(conn: HttpConnection) -> None:
    """Stop the connection's deadline, if one is armed."""
    if conn._keep_alive_timer is not None:
        conn._keep_alive_timer.cancel()
        conn._keep_alive_timer = None


def _idle_too_long(conn: HttpConnection) -> None:
    # The deadline expired: close an idle connection; give a request that is still
    # arriving until REQUEST_TIMEOUT_S after its first byte, then 408.
    conn._keep_alive_timer = None
    started = conn._message_started_s
    if started is None:
        conn.close()
        return
    remaining_s = started + REQUEST_TIMEOUT_S - conn._loop.time()
    if remaining_s > 0:
        conn._keep_alive_timer = conn._server.deadlines.call_after(
            remaining_s, partial(_idle_too_long, conn)
        )
    else:
        conn._refuse(HTTPStatus.REQUEST_TIMEOUT, "the request took too long to arrive")
