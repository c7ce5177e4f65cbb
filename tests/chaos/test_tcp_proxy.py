"""The tests' own TCP proxy (tests/support/tcp_proxy.py): it forwards both ways, holds
what arrives while stalled and delivers it in order on resume, and delays chunks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import pytest

from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.chaos

WAIT_S: Final = 10.0
DELAY_S: Final = 0.2


@asynccontextmanager
async def echo_through_proxy() -> AsyncIterator[
    tuple[TcpProxy, asyncio.StreamReader, asyncio.StreamWriter]
]:
    ended = asyncio.Event()

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()
            ended.set()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with TcpProxy("127.0.0.1", port) as proxy:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            try:
                yield proxy, reader, writer
            finally:
                writer.close()
                await writer.wait_closed()
                async with asyncio.timeout(WAIT_S):  # the proxy passes the end on
                    await ended.wait()
    finally:
        server.close()
        await server.wait_closed()


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> bytes:
    writer.write(data)
    await writer.drain()
    async with asyncio.timeout(WAIT_S):
        return await reader.readexactly(len(data))


async def test_the_proxy_forwards_both_ways() -> None:
    async with echo_through_proxy() as (_proxy, reader, writer):
        assert await exchange(reader, writer, b"hello") == b"hello"


async def test_a_stalled_proxy_holds_what_arrives_and_delivers_it_in_order_on_resume() -> None:
    async with echo_through_proxy() as (proxy, reader, writer):
        proxy.stall()
        writer.write(b"one,")
        writer.write(b"two")
        await writer.drain()
        proxy.resume()
        async with asyncio.timeout(WAIT_S):
            echoed = await reader.readexactly(len(b"one,two"))
    assert echoed == b"one,two"


async def test_a_delayed_proxy_holds_each_chunk_at_least_the_delay() -> None:
    async with echo_through_proxy() as (proxy, reader, writer):
        proxy.set_delay(DELAY_S)
        began = time.monotonic()
        echoed = await exchange(reader, writer, b"slow")
        took = time.monotonic() - began
    # A lower bound only (a loaded machine makes it longer): there and back, delayed each way.
    assert (echoed, took >= 2 * DELAY_S) == (b"slow", True)


async def test_a_cut_closes_open_connections_and_new_ones_go_through() -> None:
    async with echo_through_proxy() as (proxy, reader, writer):
        await exchange(reader, writer, b"through")  # the proxy has made the connection
        proxy.cut()
        async with asyncio.timeout(WAIT_S):
            leftover = await reader.read()  # the end of the stream: the link broke
        again_reader, again_writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            echoed = await exchange(again_reader, again_writer, b"again")
        finally:
            again_writer.close()
            await again_writer.wait_closed()
    assert (leftover, echoed) == (b"", b"again")
