"""The native server (server/native/) on a real socket, in this process: HTTP/1.1 framing,
keep-alive and pipelining, the WebSocket handshake and framing rules, liveness pings and
the graceful stop. Everything tidings serves over it is also covered by the e2e suite,
which runs on this server by default."""

from __future__ import annotations

import asyncio
import json
import struct

import httpx
import pytest

from tests.server.native.conftest import Served
from tests.support.api import ApiClient
from tests.support.raw_http import (
    API_KEY,
    TIMEOUT_S,
    command,
    connect,
    open_websocket,
    publish_request,
    upgrade,
)
from tests.support.wsframes import client_frame
from tidings.server.native import keep_alive
from tidings.server.native.frames import (
    CLOSE_INVALID_DATA,
    CLOSE_PROTOCOL_ERROR,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
)

# -- HTTP --------------------------------------------------------------------------------


async def test_keep_alive_serves_sequential_and_pipelined_requests_in_order(
    served: Served,
) -> None:
    conn = await connect(served.port)
    get = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    await conn.send(get)
    assert (await conn.response())[0] == 200
    # Three requests in one write: three responses, in request order, on one connection.
    ready = b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"
    missing = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
    await conn.send(get + missing + ready)
    statuses = [(await conn.response())[0] for _ in range(3)]
    assert statuses == [200, 404, 200]
    conn.close()


async def test_http_1_0_gets_its_answer_and_then_the_connection_closes(served: Served) -> None:
    conn = await connect(served.port)
    await conn.send(b"GET /health HTTP/1.0\r\n\r\n")
    status, headers, body = await conn.response()
    assert (status, headers["connection"], json.loads(body)) == (200, "close", {"status": "ok"})
    assert await conn.closed_by_server()


async def test_head_answers_the_length_without_a_body(served: Served) -> None:
    conn = await connect(served.port)
    await conn.send(b"HEAD /static/tidings.js HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    assert b" 200 " in head.split(b"\r\n")[0]
    assert int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) > 0
    # The next response follows at once: no body bytes came between.
    await conn.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await conn.response())[2] == b'{"status":"ok"}'
    conn.close()


async def test_expect_100_continue_gets_the_interim_answer_first(served: Served) -> None:
    conn = await connect(served.port)
    body = json.dumps({"channel": "room:expect", "data": 1}).encode()
    await conn.send(
        b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer %b\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % (API_KEY.encode(), len(body))
    )
    interim = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), TIMEOUT_S)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await conn.send(body)
    status, _, answer = await conn.response()
    assert (status, json.loads(answer)["offset"]) == (200, 1)
    conn.close()


async def test_pipelined_publishes_are_answered_in_order_errors_included(served: Served) -> None:
    conn = await connect(served.port)
    requests = [publish_request("room:pipe", n) for n in range(40)]
    requests[10] = publish_request("room:pipe", "refused", key="wrong key")
    requests[20] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"  # a run of publishes ends here
    requests[30] = publish_request("bad channel!", 1)
    await conn.send(b"".join(requests))
    answers = [await conn.response() for _ in requests]
    statuses = [status for status, _, _ in answers]
    assert statuses == [401 if n == 10 else 400 if n == 30 else 200 for n in range(40)]
    offsets = [
        json.loads(body)["offset"]
        for n, (_, _, body) in enumerate(answers)
        if n not in (10, 20, 30)
    ]
    assert offsets == list(range(1, 38))  # every publish made once, in request order
    assert json.loads(answers[10][2])["error"]["code"] == "unauthorized"
    conn.close()


async def test_an_idle_connection_is_closed_and_a_slow_request_gets_408(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keep_alive, "KEEP_ALIVE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(keep_alive, "REQUEST_TIMEOUT_S", 0.2)
    idle = await connect(served.port)
    assert await idle.closed_by_server()  # nothing sent: closed, nothing said
    slow = await connect(served.port)
    await slow.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    status, headers, _ = await slow.response()
    assert (status, headers["connection"]) == (408, "close")
    assert await slow.closed_by_server()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n", 431),
        (
            b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 9000000\r\n\r\n"
            + b"x" * 9_000_000,
            413,
        ),
    ],
)
async def test_requests_it_cannot_serve_get_a_status_and_a_close(
    served: Served, request_bytes: bytes, status: int
) -> None:
    conn = await connect(served.port)
    conn.writer.write(request_bytes)  # not drained: the server may close before reading it all
    answer = await conn.response()
    assert answer[0] == status
    assert answer[1]["connection"] == "close"
    assert await conn.closed_by_server()


async def test_an_sse_stream_is_chunked_one_event_per_chunk_and_ends_when_the_client_leaves(
    served: Served,
) -> None:
    conn = await connect(served.port)
    await conn.send(b"GET /sse?channel=room:chunks HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, first = await conn.response()
    assert (status, headers["transfer-encoding"]) == (200, "chunked")
    assert b"event: subscribed" in first
    base = f"http://127.0.0.1:{served.port}"
    async with httpx.AsyncClient(base_url=base) as http:
        api = ApiClient(http, API_KEY)
        for n in range(3):
            await api.publish("room:chunks", n)
        events = [await conn.chunk() for _ in range(3)]
        assert [json.loads(e.split(b"data: ")[1])["data"] for e in events] == [0, 1, 2]
        conn.close()
        await api.wait_for_no_subscribers("room:chunks")


# -- WebSocket ---------------------------------------------------------------------------


async def test_a_fragmented_command_is_answered_and_pings_get_their_payload_back(
    served: Served,
) -> None:
    conn = await open_websocket(served.port)
    text = command("subscribe", 1, channel="room:fragments")
    await conn.send(
        client_frame(OP_TEXT, text[:10], fin=False)
        + client_frame(OP_PING, b"in between")
        + client_frame(OP_CONTINUATION, text[10:])
    )
    assert await conn.frame() == (OP_PONG, True, b"in between")
    reply = await conn.text()
    assert reply["id"] == 1
    assert "result" in reply
    conn.close()


async def test_a_client_close_is_echoed_and_the_connection_ends(served: Served) -> None:
    conn = await open_websocket(served.port)
    await conn.send(client_frame(OP_CLOSE, struct.pack("!H", 1000) + b"bye"))
    opcode, _, payload = await conn.frame()
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, 1000)
    assert await conn.closed_by_server()


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (bytes((0x81, 0x02)) + b"{}", CLOSE_PROTOCOL_ERROR),  # unmasked
        (client_frame(OP_TEXT, b"\xff\xfe"), CLOSE_INVALID_DATA),
    ],
)
async def test_a_framing_violation_closes_with_its_code(
    served: Served, wire: bytes, code: int
) -> None:
    conn = await open_websocket(served.port)
    await conn.send(wire)
    opcode, _, payload = await conn.frame()
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, code)
    assert await conn.closed_by_server()


@pytest.mark.parametrize(
    ("extra", "version", "status"),
    [
        (b"", b"8", 426),  # an old protocol version
        (b"Origin: https://evil.example\r\n", b"13", 403),  # docs/protocol.md §8
    ],
)
async def test_a_handshake_it_refuses_gets_an_http_status(
    served: Served, extra: bytes, version: bytes, status: int
) -> None:
    conn = await connect(served.port)
    request, _ = upgrade(extra=extra, version=version)
    await conn.send(request)
    assert (await conn.response())[0] == status
    assert await conn.closed_by_server()


async def test_a_client_that_answers_pings_stays_and_one_that_does_not_is_dropped(
    served: Served,
) -> None:
    answering = await open_websocket(served.port)
    silent = await open_websocket(served.port)
    for _ in range(3):  # three ping rounds, each answered
        opcode, _, payload = await answering.frame()
        assert opcode == OP_PING
        await answering.send(client_frame(OP_PONG, payload))
    assert await silent.closed_by_server()
    await answering.send(client_frame(OP_TEXT, command("ping", 7)))
    assert (await answering.text())["id"] == 7
    answering.close()


async def test_a_stop_tells_websocket_clients_to_reconnect_and_closes_1001(
    served: Served,
) -> None:
    conn = await open_websocket(served.port)
    await conn.send(client_frame(OP_TEXT, command("ping", 1)))
    assert (await conn.text())["id"] == 1
    served.server.request_stop()
    goodbye = await conn.text()
    assert (goodbye["push"], goodbye["code"], goodbye["reconnect"]) == ("disconnect", 1001, True)
    opcode, _, payload = await conn.frame()
    assert (opcode, struct.unpack("!H", payload[:2])[0]) == (OP_CLOSE, 1001)
    await conn.send(client_frame(OP_CLOSE, payload[:2]))
    assert await conn.closed_by_server()
    await asyncio.wait_for(served.task, TIMEOUT_S)
