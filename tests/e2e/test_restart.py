"""Resuming across a server restart: with ``--data DIR`` (the sqlite broker) history,
epochs, offsets and idempotency keys survive; with the memory broker the epoch changes,
so a resuming client is told ``recovered: false`` instead of being given wrong offsets."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import API_KEY, api_client, serving
from tests.support.server import ServerProcess, start_server
from tests.support.ws import ws_client


def restart(process: ServerProcess, config: Path, data: Path | None) -> ServerProcess:
    """Stop ``process`` gracefully (SIGTERM) and start a new one on the same data."""
    process.stop(signal.SIGTERM)
    return start_server(config=config, data=data, env={"TIDINGS_API_KEY": API_KEY})


async def test_sqlite_resume_after_restart_recovers_publications_from_before_and_after_it(
    config_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with serving(config_file, data=data) as first:
        async with api_client(first) as api:
            async with ws_client(first.ws_url) as client:
                await client.result("subscribe", channel="room:r")
                await api.publish_many("room:r", 3)
                seen = await client.publications(3)
            since = {"epoch": seen[-1]["epoch"], "offset": seen[-1]["offset"]}
            await api.publish_many("room:r", 3, start=4)  # while away, before the restart
        second = restart(first, config_file, data)
    try:
        async with api_client(second) as api:
            after = [await api.publish("room:r", {"n": n}) for n in (7, 8)]
            async with ws_client(second.ws_url) as client:
                resumed = await client.result("subscribe", channel="room:r", since=since)
                await api.publish("room:r", {"n": 9})
                [live] = await client.publications(1)
    finally:
        second.kill()

    assert after == [{"epoch": since["epoch"], "offset": 7}, {"epoch": since["epoch"], "offset": 8}]
    assert resumed["recovered"] is True
    assert (resumed["epoch"], resumed["offset"]) == (since["epoch"], 8)
    assert [(p["offset"], p["data"]) for p in resumed["publications"]] == [
        (n, {"n": n}) for n in range(4, 9)
    ]
    assert (live["epoch"], live["offset"], live["data"]) == (since["epoch"], 9, {"n": 9})


async def test_sqlite_keeps_acknowledged_publications_through_a_crash(
    config_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with serving(config_file, data=data) as first:
        async with api_client(first) as api:
            acknowledged = [await api.publish("room:crash", {"n": n}) for n in range(1, 21)]
        first.kill()  # SIGKILL: no drain, no close of the database
        with serving(config_file, data=data) as second:
            async with ws_client(second.ws_url) as client:
                read = await client.result("history", channel="room:crash")
    epoch = acknowledged[0]["epoch"]
    assert (read["epoch"], read["offset"]) == (epoch, 20)
    assert [(p["epoch"], p["offset"], p["data"]) for p in read["publications"]] == [
        (epoch, n, {"n": n}) for n in range(1, 21)
    ]


async def test_sqlite_remembers_idempotency_keys_across_a_restart(
    config_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    body = {"channel": "room:k", "data": {"n": 1}, "key": "order-17"}
    with serving(config_file, data=data) as first:
        async with api_client(first) as api:
            original = (await api.http.post("/api/publish", json=body, headers=api.headers)).json()
        second = restart(first, config_file, data)
    try:
        async with api_client(second) as api:
            retried = (await api.http.post("/api/publish", json=body, headers=api.headers)).json()
            following = await api.publish("room:k", {"n": 2})
    finally:
        second.kill()
    assert retried == {**original, "duplicate": True}
    assert following == {"epoch": original["epoch"], "offset": original["offset"] + 1}


async def test_sqlite_resume_of_a_channel_never_published_before_the_restart_recovers(
    config_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    with serving(config_file, data=data) as first:
        async with ws_client(first.ws_url) as client:
            empty = await client.result("subscribe", channel="room:new")
        second = restart(first, config_file, data)
    try:
        async with api_client(second) as api:
            await api.publish("room:new", {"n": 1})
            async with ws_client(second.ws_url) as client:
                resumed = await client.result(
                    "subscribe",
                    channel="room:new",
                    since={"epoch": empty["epoch"], "offset": empty["offset"]},
                )
    finally:
        second.kill()
    assert empty["offset"] == 0
    assert resumed["recovered"] is True
    assert [p["offset"] for p in resumed["publications"]] == [1]


async def test_memory_broker_restart_changes_the_epoch_so_resume_is_not_recovered(
    config_file: Path,
) -> None:
    with serving(config_file) as first:
        async with api_client(first) as api:
            before = [await api.publish("room:m", {"n": n}) for n in (1, 2, 3)]
        second = restart(first, config_file, None)
    try:
        async with api_client(second) as api, ws_client(second.ws_url) as client:
            resumed = await client.result("subscribe", channel="room:m", since=before[-1])
            after = await api.publish("room:m", {"n": 4})
            [live] = await client.publications(1)
    finally:
        second.kill()
    assert resumed["recovered"] is False
    assert resumed["epoch"] != before[-1]["epoch"]
    assert (resumed["offset"], resumed["publications"]) == (0, [])
    # The new history starts over, in the new epoch, and is delivered live.
    assert after == {"epoch": resumed["epoch"], "offset": 1}
    assert (live["epoch"], live["offset"]) == (resumed["epoch"], 1)


async def test_sqlite_keeps_client_and_server_key_spaces_apart_across_a_restart(
    config_file: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    fields: dict[str, Any] = {"channel": "room:spaces", "key": "k-1"}
    with serving(config_file, data=data) as first:
        async with ws_client(first.ws_url) as client:
            by_client = await client.result("publish", **fields, data=1)
        second = restart(first, config_file, data)
    try:
        async with api_client(second) as api, ws_client(second.ws_url) as client:
            by_server = await api.http.post(
                "/api/publish", json={**fields, "data": 2}, headers=api.headers
            )
            client_retry = await client.result("publish", **fields, data=3)
    finally:
        second.kill()
    assert by_server.json()["offset"] == by_client["offset"] + 1
    assert client_retry == by_client
