"""The Kafka source survives being killed: 10,000 records in 3 partitions, consumed by a
runner process (tests/support/kafka_runner.py) that is SIGKILLed twice mid-stream, reach
their channels each exactly once, in partition order. Against a real Kafka-protocol
broker (Tansu) and a sqlite broker whose directory outlives the runners.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Final

from tests.support.kafka import (
    CommitReader,
    Produce,
    commit_reader,
    create_topic,
    produce,
    wait_until,
)
from tests.support.kafka_runner import NAMESPACES
from tests.support.tansu import running_tansu
from tidings.brokers.sqlite import SqliteBroker
from tidings.core.channel import ChannelName
from tidings.core.recovery import Replay

TOPIC: Final = "rooms"
GROUP: Final = "tidings-rooms"
PARTITIONS: Final = 3
ROOMS: Final = 12
RECORDS: Final = 10_000
# Each runner is killed once the group has committed this share of the records.
KILL_AFTER: Final = (0.3, 0.6)
REPOSITORY: Final = Path(__file__).resolve().parents[2]
STOP_TIMEOUT_S: Final = 10.0


def _room(seq: int) -> int:
    return seq % ROOMS


def _records() -> list[Produce]:
    # Each room is one key, in one partition: its channel gets that partition's order.
    return [
        Produce(
            value=json.dumps({"seq": seq}).encode(),
            key=f"r{_room(seq)}".encode(),
            partition=_room(seq) % PARTITIONS,
        )
        for seq in range(RECORDS)
    ]


@contextmanager
def _runner(bootstrap_servers: str, data_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.kafka_runner",
            bootstrap_servers,
            TOPIC,
            GROUP,
            str(data_dir),
        ],
        cwd=REPOSITORY,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(STOP_TIMEOUT_S)


async def _committed(commits: CommitReader, target: int) -> bool:
    return await commits.total(TOPIC, PARTITIONS) >= target


async def _published_seqs(data_dir: Path) -> dict[int, list[int]]:
    """Room -> the ``seq`` of each publication in its channel, in offset order."""
    broker = SqliteBroker(data_dir, NAMESPACES)
    await broker.start(lambda publication: None)
    try:
        seqs: dict[int, list[int]] = {}
        for room in range(ROOMS):
            read = await broker.history(ChannelName(f"room:r{room}"))
            assert isinstance(read.recovery, Replay)
            seqs[room] = [json.loads(p.data)["seq"] for p in read.recovery.publications]
        return seqs
    finally:
        await broker.close()


async def test_records_reach_channels_once_in_order_across_two_sigkills(tmp_path: Path) -> None:
    data_dir = tmp_path / "broker"
    with running_tansu() as tansu:
        servers = tansu.bootstrap_servers
        await create_topic(servers, TOPIC, PARTITIONS)
        await produce(servers, TOPIC, _records())
        async with commit_reader(servers, GROUP) as commits:
            for share in KILL_AFTER:
                target = int(RECORDS * share)
                with _runner(servers, data_dir) as runner:
                    await wait_until(partial(_committed, commits, target), f"{target} committed")
                    runner.kill()  # SIGKILL: no commit on the way out
                    runner.wait(STOP_TIMEOUT_S)
                # The kill came mid-stream, not after the runner had finished.
                assert await commits.total(TOPIC, PARTITIONS) < RECORDS
            with _runner(servers, data_dir):
                await wait_until(partial(_committed, commits, RECORDS), "all records committed")

    published = await _published_seqs(data_dir)
    for room in range(ROOMS):
        expected = [seq for seq in range(RECORDS) if _room(seq) == room]
        got = published[room]
        assert got == expected, (
            f"room:r{room}: {len(got)} publications of {len(expected)} records, "
            f"{len(got) - len(set(got))} repeated, {len(set(expected) - set(got))} missing"
        )
