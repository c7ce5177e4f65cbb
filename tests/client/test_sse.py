"""The client's ``sse`` transport (client/sse.py): the event-stream decoder, fed line by
line as httpx splits, and a stream that goes silent."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tidings.client.connector import Attempt
from tidings.client.positions import PositionTracker
from tidings.client.sse import EventStreamDecoder, ServerSentEvent, SseConnector
from tidings.core.channel import ChannelName
from tidings.core.publication import Position
from tidings.errors import ConnectionClosed


def decode(lines: list[str]) -> list[ServerSentEvent]:
    decoder = EventStreamDecoder()
    return [event for line in lines if (event := decoder.receive_line(line)) is not None]


def test_decoder_reads_the_servers_subscribed_and_pub_events() -> None:
    lines = [
        "retry: 2113",
        "id: CURSOR1",
        "event: subscribed",
        'data: {"channels":{}}',
        "",
        ": ping",
        "",
        "id: CURSOR2",
        "event: pub",
        'data: {"offset":1}',
        "",
    ]
    assert decode(lines) == [
        ServerSentEvent("subscribed", '{"channels":{}}', "CURSOR1"),
        ServerSentEvent("pub", '{"offset":1}', "CURSOR2"),
    ]


def test_decoder_joins_data_lines_and_defaults_the_type_to_message() -> None:
    assert decode(["data: a", "data:b", "", "data", ""]) == [
        ServerSentEvent("message", "a\nb", None),
        ServerSentEvent("message", "", None),
    ]


def test_decoder_dispatches_nothing_for_a_block_without_data() -> None:
    assert decode(["event: pub", "id: X", "", ": comment", ""]) == []


def test_decoder_ignores_unknown_fields_and_ids_holding_nul() -> None:
    assert decode(["foo: bar", "id: a\0b", "data: x", ""]) == [
        ServerSentEvent("message", "x", None)
    ]


# -- a stream that goes silent -------------------------------------------------------------

SUBSCRIBED = (
    b"event: subscribed\n"
    b'data: {"channels":{"room:x":{"epoch":"e","offset":0,"recovered":false}}}\n\n'
)


async def test_a_stream_silent_past_the_read_timeout_raises_read_timeout() -> None:
    finished = asyncio.Event()

    async def silent_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(SUBSCRIBED), SUBSCRIBED)
        )
        await writer.drain()
        await finished.wait()  # not even ": ping" from here on
        writer.close()

    server = await asyncio.start_server(silent_stream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    tracker = PositionTracker([ChannelName("room:x")])
    attempt = Attempt()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            connector = SseConnector(http, read_timeout_s=0.2)
            with pytest.raises(httpx.ReadTimeout):
                async for _ in connector.session(tracker, attempt):
                    pass
    finally:
        finished.set()
        server.close()
        await server.wait_closed()
    assert attempt.connected
    assert attempt.subscribed
    assert tracker.positions == {"room:x": Position("e", 0)}


async def test_a_disconnect_event_hands_its_delay_to_the_subscription() -> None:
    goodbye = (
        b"event: disconnect\n"
        b'data: {"code":1001,"reason":"server shutting down","reconnect":true,"delay":2500}\n\n'
    )

    async def draining_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = SUBSCRIBED + goodbye
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n%s\r\n" % (len(body), body)
            + b"0\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(draining_stream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            connector = SseConnector(http, read_timeout_s=5.0)
            with pytest.raises(ConnectionClosed) as closed:
                async for _ in connector.session(
                    PositionTracker([ChannelName("room:x")]), Attempt()
                ):
                    pass
    finally:
        server.close()
        await server.wait_closed()
    assert (closed.value.code, closed.value.reconnect, closed.value.delay_ms) == (1001, True, 2500)
