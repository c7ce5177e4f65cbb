"""The chat demo on the PostgreSQL broker (docs/demo.md): a real ``tidings serve --demo
--broker postgres://...`` process on the machine's PostgreSQL, a schema of its own.

Messages are rows of ``<schema>_demo.messages``, published by a table source: a message
posted through the demo's backend lands as a row, and reaches WebSocket and SSE
subscribers at the next offset of its room; a row inserted by SQL, as another service
would, reaches them too; a retried post (same key) is one row.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import httpx
import psycopg
import pytest

from tests.support.postgres import POSTGRES_URL, drop_schema, require_postgres, unique_schema
from tests.support.server import ServerProcess, start_server
from tests.support.sse import sse_stream
from tests.support.ws import ws_client
from tidings.sources.table_db import CURSOR_TABLE

WAIT_S: Final = 15.0


@pytest.fixture
def demo_schema() -> Iterator[str]:
    """A broker schema of the test's own; the demo's schema, cursor row and trigger
    function are removed afterwards."""
    require_postgres()
    schema = unique_schema()
    yield schema
    drop_schema(schema)
    drop_schema(f"{schema}_demo")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"DROP FUNCTION IF EXISTS tidings_source_demo_{schema}_notify()".encode())
        if conn.execute("SELECT to_regclass(%s)", (CURSOR_TABLE,)).fetchone() != (None,):
            conn.execute(
                f"DELETE FROM {CURSOR_TABLE} WHERE source = %s".encode(), (f"demo_{schema}",)
            )


@pytest.fixture
def demo_node(demo_schema: str) -> Iterator[ServerProcess]:
    node = start_server("--demo", "--broker", f"{POSTGRES_URL}?schema={demo_schema}")
    try:
        yield node
    finally:
        node.stop()


def rows(schema: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(POSTGRES_URL) as conn:
        query = f"SELECT id, room, author, text, key FROM {schema}_demo.messages ORDER BY id"
        return conn.execute(query.encode()).fetchall()


async def test_messages_are_rows_that_reach_ws_and_sse_subscribers(
    demo_node: ServerProcess, demo_schema: str
) -> None:
    async with httpx.AsyncClient(base_url=demo_node.http_url, timeout=WAIT_S) as http:
        about = (await http.get("/demo/about")).json()
        assert about == {"messages": "table", "table": f"{demo_schema}_demo.messages"}
        token = (await http.post("/demo/token", json={"name": "ann"})).json()["token"]
        auth = {"Authorization": f"Bearer {token}"}
        async with (
            ws_client(f"{demo_node.ws_url}?token={token}") as ws,
            sse_stream(http, {"channel": "room:lobby", "token": token}) as sse,
        ):
            subscribed = await ws.result("subscribe", channel="room:lobby")
            assert subscribed["offset"] == 0
            assert (await sse.next_event(WAIT_S)).type == "subscribed"

            body = {"channel": "room:lobby", "data": {"text": "hello"}, "key": "m-1"}
            posted = (await http.post("/demo/publish", json=body, headers=auth)).json()
            again = (await http.post("/demo/publish", json=body, headers=auth)).json()
            assert posted == {"id": posted["id"], "duplicate": False}
            assert again == {"id": posted["id"], "duplicate": True}
            assert rows(demo_schema) == [(posted["id"], "lobby", "ann", "hello", "m-1")]

            with psycopg.connect(POSTGRES_URL) as conn:  # another service, writing SQL
                inserted = conn.execute(
                    f"INSERT INTO {demo_schema}_demo.messages (room, author, text) "
                    "VALUES ('lobby', 'billing', 'invoice paid') RETURNING id".encode()
                ).fetchone()
            assert inserted is not None

            over_ws = await ws.publications(2, WAIT_S)
            over_sse = [event.json() for event in await sse.pub_events(2, WAIT_S)]
        for received in (over_ws, over_sse):
            assert [p["offset"] for p in received] == [1, 2]
            assert [
                (p["data"]["id"], p["data"]["author"], p["data"]["text"]) for p in received
            ] == [
                (posted["id"], "ann", "hello"),
                (inserted[0], "billing", "invoice paid"),
            ]
            assert all(p["epoch"] == subscribed["epoch"] for p in received)


async def test_a_message_that_is_not_text_is_refused_and_saves_nothing(
    demo_node: ServerProcess, demo_schema: str
) -> None:
    async with httpx.AsyncClient(base_url=demo_node.http_url, timeout=WAIT_S) as http:
        token = (await http.post("/demo/token", json={"name": "ann"})).json()["token"]
        answer = await http.post(
            "/demo/publish",
            json={"channel": "room:lobby", "data": {"picture": "cat.png"}},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert answer.status_code == 400
    assert "data must be" in answer.json()["error"]["message"]
    assert rows(demo_schema) == []


async def test_a_restarted_node_keeps_the_table_and_publishes_each_row_once(
    demo_schema: str,
) -> None:
    url = f"{POSTGRES_URL}?schema={demo_schema}"
    for text in ("before", "after"):
        node = start_server("--demo", "--broker", url)
        try:
            async with httpx.AsyncClient(base_url=node.http_url, timeout=WAIT_S) as http:
                token = (await http.post("/demo/token", json={"name": "ann"})).json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                async with ws_client(f"{node.ws_url}?token={token}") as ws:
                    await ws.result("subscribe", channel="room:lobby")
                    body = {"channel": "room:lobby", "data": {"text": text}}
                    await http.post("/demo/publish", json=body, headers=auth)
                    [live] = await ws.publications(1, WAIT_S)
                    assert live["data"]["text"] == text
                history = await http.get(
                    "/demo/history", params={"channel": "room:lobby"}, headers=auth
                )
        finally:
            node.stop()
    texts = [p["data"]["text"] for p in history.json()["publications"]]
    assert texts == ["before", "after"]  # the first row was not published again
    assert [row[3] for row in rows(demo_schema)] == ["before", "after"]
