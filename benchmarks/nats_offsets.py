"""How to give gap-free per-channel offsets on NATS JetStream: two schemes side by side.

* **occ** (what ``tidings.brokers.nats`` does): publish offset + 1 of the head with
  ``Nats-Expected-Last-Subject-Sequence`` = the head's stream sequence; on "wrong last
  sequence" read the head again (``last_by_subj``) and retry. One request per
  publication when uncontended.
* **kv**: a counter per channel in a key-value bucket, taken by compare-and-set
  (``Nats-Expected-Last-Subject-Sequence`` on the counter's key = its revision; on a
  conflict read it again), then the publication stored with that offset, unconditionally.
  Two requests per publication when uncontended, and a node dying between the two
  leaves a hole no one fills.

Each publisher is its own connection (a node of its own: conflicts between nodes are
what the schemes differ in; within one node the broker takes turns per channel), all
publishing for ``--seconds`` into one channel, then into ``--channels`` channels (each
publication to a random one). Figures: publications/s and requests per publication.
Offsets are checked afterwards: 1..N in every channel, each once.

Run: ``.venv/bin/python benchmarks/nats_offsets.py`` (NATS with JetStream at
127.0.0.1:4222; it makes and deletes streams named ``bench-offsets-*``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import nats
from nats.aio.client import Client

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
CONFLICTS: Final = (10071, 10164)
NO_MESSAGE: Final = 10037


@dataclass
class Tally:
    publications: int = 0
    requests: int = 0
    offsets: dict[str, list[int]] = field(default_factory=dict)


async def request(
    client: Client, tally: Tally, subject: str, payload: bytes, **kw: object
) -> dict[str, object]:
    tally.requests += 1
    reply = await client.request(subject, payload, timeout=10, **kw)  # type: ignore[arg-type]
    answer: dict[str, object] = json.loads(reply.data)
    return answer


def error_code(answer: dict[str, object]) -> int:
    error = answer.get("error")
    return int(error.get("err_code", 0)) if isinstance(error, dict) else 0


async def last_offset(client: Client, tally: Tally, stream: str, subject: str) -> tuple[int, int]:
    """Return (stream sequence, offset) of ``subject``'s last message, (0, 0) if none."""
    answer = await request(
        client,
        tally,
        f"$JS.API.STREAM.MSG.GET.{stream}",
        json.dumps({"last_by_subj": subject}).encode(),
    )
    if error_code(answer) == NO_MESSAGE:
        return 0, 0
    message = answer["message"]
    assert isinstance(message, dict)
    body = json.loads(base64.b64decode(message["data"]))
    return int(message["seq"]), int(body["offset"])


async def occ_publisher(
    client: Client, tally: Tally, stream: str, channels: list[str], stop: float
) -> None:
    heads: dict[str, tuple[int, int]] = {}
    while time.monotonic() < stop:
        channel = random.choice(channels)
        subject = f"{stream}.h.{channel}"
        while True:
            head = heads.get(channel) or await last_offset(client, tally, stream, subject)
            body = json.dumps({"offset": head[1] + 1}).encode()
            headers = {"Nats-Expected-Last-Subject-Sequence": str(head[0])}
            answer = await request(client, tally, subject, body, headers=headers)
            if error_code(answer) in CONFLICTS:
                heads.pop(channel, None)
                continue
            heads[channel] = (int(answer["seq"]), head[1] + 1)  # type: ignore[call-overload]
            break
        tally.publications += 1


async def kv_publisher(
    client: Client, tally: Tally, stream: str, channels: list[str], stop: float
) -> None:
    counters: dict[str, tuple[int, int]] = {}
    while time.monotonic() < stop:
        channel = random.choice(channels)
        key = f"$KV.{stream}-counters.{channel}"
        while True:
            revision, value = counters.get(channel) or await last_offset(
                client, tally, f"KV_{stream}-counters", key
            )
            body = json.dumps({"offset": value + 1}).encode()
            headers = {"Nats-Expected-Last-Subject-Sequence": str(revision)}
            answer = await request(client, tally, key, body, headers=headers)
            if error_code(answer) in CONFLICTS:
                counters.pop(channel, None)
                continue
            counters[channel] = (int(answer["seq"]), value + 1)  # type: ignore[call-overload]
            break
        await request(client, tally, f"{stream}.h.{channel}", body)
        tally.publications += 1


async def make_streams(client: Client, stream: str) -> None:
    for name, subjects in (
        (stream, [f"{stream}.h.>"]),
        (f"KV_{stream}-counters", [f"$KV.{stream}-counters.>"]),
    ):
        config = {"name": name, "subjects": subjects, "storage": "file"}
        await client.request(
            f"$JS.API.STREAM.CREATE.{name}", json.dumps(config).encode(), timeout=10
        )


async def delete_streams(client: Client, stream: str) -> None:
    for name in (stream, f"KV_{stream}-counters"):
        await client.request(f"$JS.API.STREAM.DELETE.{name}", b"", timeout=10)


async def check_offsets(client: Client, stream: str, channels: list[str], published: int) -> None:
    """Every channel holds as many publications as its last offset (a repeated offset
    would make more, a hole fewer), and all of them were acknowledged."""
    tally = Tally()
    total = 0
    for channel in channels:
        subject = f"{stream}.h.{channel}"
        _, offset = await last_offset(client, tally, stream, subject)
        info = await request(
            client,
            tally,
            f"$JS.API.STREAM.INFO.{stream}",
            json.dumps({"subjects_filter": subject}).encode(),
        )
        state = info["state"]
        assert isinstance(state, dict)
        count = int(state.get("subjects", {}).get(subject, 0))
        assert count == offset, f"{channel}: {count} stored, last offset {offset}"
        total += count
    assert total == published, f"{total} stored, {published} acknowledged"


async def run(
    url: str, scheme: str, publishers: int, channel_count: int, seconds: float
) -> tuple[float, float]:
    stream = f"bench-offsets-{secrets.token_hex(3)}"
    admin = await nats.connect(url)
    await make_streams(admin, stream)
    clients = [await nats.connect(url) for _ in range(publishers)]
    channels = [f"c{n}" for n in range(channel_count)]
    tallies = [Tally() for _ in clients]
    publisher = occ_publisher if scheme == "occ" else kv_publisher
    try:
        start = time.monotonic()
        stop = start + seconds
        await asyncio.gather(
            *(
                publisher(c, t, stream, channels, stop)
                for c, t in zip(clients, tallies, strict=True)
            )
        )
        elapsed = time.monotonic() - start
        await check_offsets(admin, stream, channels, sum(t.publications for t in tallies))
    finally:
        for client in clients:
            await client.close()
        await delete_streams(admin, stream)
        await admin.close()
    published = sum(t.publications for t in tallies)
    requests = sum(t.requests for t in tallies)
    return published / elapsed, requests / max(1, published)


async def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--publishers", default="1,16,128")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    print("| scheme | channels | publishers | publications/s | requests/publication |")
    print("|---|---|---|---|---|")
    for channel_count in (1, args.channels):
        for publishers in (int(n) for n in args.publishers.split(",")):
            for scheme in ("occ", "kv"):
                rate, cost = await run(args.url, scheme, publishers, channel_count, args.seconds)
                print(f"| {scheme} | {channel_count} | {publishers} | {rate:,.0f} | {cost:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
