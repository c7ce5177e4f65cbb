"""The table source in real ``tidings serve`` processes reading the machine's
PostgreSQL: every row published exactly once, in cursor order per channel, while an
application inserts 10,000 rows and the node is SIGKILLed twice; a second node taking
over when the lock holder is killed; a missing table or column stopping the node with
one line; and ``tidings sources install-trigger``."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import httpx
import pytest

from tests.sources.conftest import AppDatabase
from tests.support.server import ServerProcess, start_server
from tidings.server.runner import ExitStatus

ROWS: Final = 10_000
ROOMS: Final = 10
ROWS_PER_TRANSACTION: Final = 50
DEADLINE_S: Final = 40.0


def write_config(path: Path, db: AppDatabase, extra: str = "") -> Path:
    path.write_text(
        f"""
[namespaces.room]
history_size = {ROWS}

[[sources]]
name = "{db.table}"
kind = "table"
dsn = "{db.dsn}"
table = "{db.table}"
channel = "room:{{room_id}}"
poll_interval = "100ms"
batch = 200
{extra}
"""
    )
    return path


def wait_for(check: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Poll ``check`` until true; fail after ``deadline_s``."""
    deadline = time.monotonic() + deadline_s
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def cursor_at_least(db: AppDatabase, value: int) -> Callable[[], bool]:
    return lambda: (db.saved_cursor() or 0) >= value


def history_ids(node: ServerProcess, channel: str) -> list[int]:
    answer = httpx.get(f"{node.http_url}/api/history", params={"channel": channel}, timeout=10)
    answer.raise_for_status()
    return [int(p["data"]["id"]) for p in answer.json()["publications"]]


def install_trigger(config: Path, name: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tidings", "sources", "install-trigger", name]
    return subprocess.run(
        [*command, "--config", str(config), "--yes"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.e2e
def test_every_row_is_published_once_in_order_while_the_node_is_killed_twice(
    postgres_db: AppDatabase, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "tidings.toml", postgres_db)
    installed = install_trigger(config, postgres_db.table)
    assert installed.returncode == 0, installed.stderr
    assert "CREATE TRIGGER" in installed.stdout
    data = tmp_path / "data"  # the sqlite broker: history and dedupe keys outlive a kill
    rooms: dict[int, list[int]] = {room: [] for room in range(ROOMS)}

    def application() -> None:
        for start in range(0, ROWS, ROWS_PER_TRANSACTION):
            batch = [
                (n % ROOMS, f"message {n}") for n in range(start, start + ROWS_PER_TRANSACTION)
            ]
            for (room, _), row_id in zip(batch, postgres_db.insert(batch), strict=True):
                rooms[room].append(row_id)

    writer = threading.Thread(target=application, daemon=True)
    node = start_server(config=config, data=data)
    try:
        writer.start()
        for at_least in (ROWS // 5, ROWS // 2):
            wait_for(cursor_at_least(postgres_db, at_least), f"cursor {at_least}")
            node.kill()  # most likely between a batch's publishes and its cursor save
            node = start_server(config=config, data=data)
        writer.join(DEADLINE_S)
        assert not writer.is_alive()
        last = max(max(ids) for ids in rooms.values())
        wait_for(lambda: postgres_db.saved_cursor() == last, "the cursor at the last row")
        for room, expected in rooms.items():
            assert history_ids(node, f"room:{room}") == expected
    finally:
        node.kill()


@pytest.mark.e2e
def test_a_second_node_takes_over_when_the_lock_holder_is_killed(
    postgres_db: AppDatabase, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "tidings.toml", postgres_db)
    first = postgres_db.insert([(1, "first")])
    holder = start_server(config=config)
    waiting: ServerProcess | None = None
    try:
        wait_for(lambda: postgres_db.saved_cursor() == first[0], "the holder's cursor")
        waiting = start_server(config=config)
        second = postgres_db.insert([(1, "second")])
        wait_for(lambda: postgres_db.saved_cursor() == second[0], "the holder's cursor")
        assert history_ids(holder, "room:1") == first + second
        assert history_ids(waiting, "room:1") == []
        holder.kill()
        third = postgres_db.insert([(1, "third")])
        wait_for(lambda: history_ids(waiting, "room:1") == third, "the waiting node's takeover")
    finally:
        holder.kill()
        if waiting is not None:
            waiting.kill()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ('table = "no_such_table"', "table 'no_such_table' does not exist in postgres://"),
        ('cursor = "seq"', "column 'seq' (in cursor) is not in table"),
    ],
)
def test_a_missing_table_or_column_stops_the_node_with_one_line(
    postgres_db: AppDatabase, tmp_path: Path, extra: str, named: str
) -> None:
    text = write_config(tmp_path / "tidings.toml", postgres_db).read_text()
    key = extra.split(" = ", maxsplit=1)[0]
    lines = [line for line in text.splitlines() if not line.startswith(f"{key} = ")]
    config = tmp_path / "bad.toml"
    config.write_text("\n".join([*lines, extra]) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "tidings", "serve", "--port", "0", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == ExitStatus.CONFIG, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: source {postgres_db.table!r}: " + done.stderr.split(": ", 2)[2].strip()
    ]
    assert named in done.stderr
