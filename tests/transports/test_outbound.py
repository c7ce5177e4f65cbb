"""The ASGI outbound (transports/outbound.py): a queue drained by one writer task. How a
reader held in ``wait_sent`` is released: when the writer takes the queue, when the
connection finishes, and when the writer is gone (the client left)."""

from __future__ import annotations

import asyncio

from tidings.transports.outbound import QueuedOutbound

WAIT_S = 10.0


class Wire:
    """The ASGI side: writes block at ``gate`` until the test opens it, or fail."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.written: list[str] = []
        self.ended: list[int] = []
        self.client_gone = False

    async def write(self, chunks: list[str]) -> None:
        await self.gate.wait()
        if self.client_gone:
            raise ConnectionResetError("the client left")
        self.written.extend(chunks)

    async def end(self, code: int, reason: str) -> None:
        self.ended.append(code)


async def test_a_held_reader_goes_on_once_the_writer_took_the_queue() -> None:
    wire = Wire()
    out = QueuedOutbound(wire.write, wire.end)
    out.start()
    out.put("a")
    await asyncio.sleep(0)  # the writer takes "a" and blocks writing it
    out.put("b")
    waiting = asyncio.create_task(out.wait_sent())
    await asyncio.sleep(0)
    assert not waiting.done()
    wire.gate.set()  # "a" leaves; the writer takes "b"
    async with asyncio.timeout(WAIT_S):
        await waiting
    out.finish("bye", 1000, "")
    async with asyncio.timeout(WAIT_S):
        await out.run()  # waits for the started writer; no second one
    assert wire.written == ["a", "b", "bye"]
    assert wire.ended == [1000]


async def test_a_held_reader_goes_on_when_the_connection_finishes() -> None:
    wire = Wire()
    out = QueuedOutbound(wire.write, wire.end)
    out.start()
    out.put("a")
    await asyncio.sleep(0)
    out.put("b")
    waiting = asyncio.create_task(out.wait_sent())
    await asyncio.sleep(0)
    out.finish("bye", 4500, "slow consumer")
    async with asyncio.timeout(WAIT_S):
        await waiting
    await out.stop(client_left=True)


async def test_a_held_reader_goes_on_when_the_writer_is_gone() -> None:
    wire = Wire()
    out = QueuedOutbound(wire.write, wire.end)
    out.start()
    out.put("a")
    await asyncio.sleep(0)
    out.put("b")
    waiting = asyncio.create_task(out.wait_sent())
    await asyncio.sleep(0)
    wire.client_gone = True
    wire.gate.set()  # the write of "a" fails: the writer ends, "b" is never taken
    async with asyncio.timeout(WAIT_S):
        await waiting
    assert out.pending_bytes == 1
