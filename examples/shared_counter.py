"""Shared counters whose state lives on their key's owner (docs/modes/hashing.md,
"Per-key state"): an application embedding tidings in the consistent-hashing mode.

Each counter ``counter:<name>`` is a routing key of the ring, and a channel. The node
that owns it keeps its value in memory: loaded from the store (a SQLite file standing in
for the application's database) when the node gains the key, saved there when it loses
it (another node took the key, the node is leaving, or the counter was idle). A request
to change a counter reaching another node is redirected (307) to the owner, which adds,
then publishes the new value in the counter's channel, so every subscriber sees it.

Run two nodes on one etcd ring (``apt-get install etcd-server``; ``etcd`` on
127.0.0.1:2379), sharing the store::

    export TIDINGS_RING_ETCD=http://127.0.0.1:2379 COUNTER_DB=/tmp/counters.sqlite3
    TIDINGS_NODE_ID=a TIDINGS_PUBLIC_URL=http://127.0.0.1:8001/realtime \\
        .venv/bin/python -m examples.shared_counter --port 8001 &
    TIDINGS_NODE_ID=b TIDINGS_PUBLIC_URL=http://127.0.0.1:8002/realtime \\
        .venv/bin/python -m examples.shared_counter --port 8002 &

then watch a counter (``tidings subscribe counter:hits --server
http://127.0.0.1:8001/realtime``: the client follows the ring to the owner) and add to
it through either node: ``curl -L -X POST 'http://127.0.0.1:8002/counters/hits?by=1'``.
Start a third node, or stop one (Ctrl-C): the counters it gives away are saved, and
their next owner loads them and goes on counting. A subscriber moved to the new owner
is told of a gap (the channel's history does not move with the key yet): it reads the
counter (``GET /counters/hits``) and goes on with the publications. Every node's
tidings is mounted at ``/realtime``, which its ``public_url`` names: that is where the
ring sends clients.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sqlite3
from pathlib import Path
from typing import Final

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from tidings import KeyHooks, Moved, Settings, TidingsApp, load_settings
from tidings.core.channel import parse_channel
from tidings.errors import BadRequest, Unavailable

logger = logging.getLogger("examples.shared_counter")

MOUNT: Final = "/realtime"
NAMESPACE: Final = "counter"
# A counter nobody changed or watched for this long is saved and dropped from memory.
IDLE_S: Final = 60.0


class CounterStore:
    """The application's database: one row per counter (SQLite, in a thread)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS counters (key TEXT PRIMARY KEY, value INTEGER)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=10.0)

    async def load(self, key: str) -> int:
        """Return the saved value of ``key`` (0 if never saved)."""
        return await asyncio.to_thread(self._load, key)

    async def save(self, key: str, value: int) -> None:
        """Save ``value`` as ``key``'s."""
        await asyncio.to_thread(self._save, key, value)

    def _load(self, key: str) -> int:
        with self._connect() as db:
            row = db.execute("SELECT value FROM counters WHERE key = ?", (key,)).fetchone()
        return 0 if row is None else int(row[0])

    def _save(self, key: str, value: int) -> None:
        with self._connect() as db:
            db.execute(
                "INSERT INTO counters (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )


class Counters:
    """The counters this node owns, in memory: tidings' ``KeyHandler``."""

    def __init__(self, store: CounterStore) -> None:
        self._store = store
        self.values: dict[str, int] = {}
        self.locks: dict[str, asyncio.Lock] = {}

    async def gained(self, key: str) -> None:
        """Load ``key``'s value: this node owns the counter from now on."""
        self.values[key] = await self._store.load(key)
        self.locks[key] = asyncio.Lock()
        logger.info("gained %s = %d (loaded)", key, self.values[key])

    async def lost(self, key: str) -> None:
        """Save ``key``'s value and forget it: another node owns the counter now."""
        value = self.values.pop(key)
        self.locks.pop(key, None)
        await self._store.save(key, value)
        logger.info("lost %s = %d (saved)", key, value)


def create_app(settings: Settings, store: CounterStore) -> Starlette:
    """Return the application: the counters' routes, and tidings mounted at ``MOUNT``."""
    counters = Counters(store)
    hooks = KeyHooks(counters, idle_s=IDLE_S, namespaces=(NAMESPACE,))
    realtime = TidingsApp(settings, key_hooks=hooks)

    async def counter(request: Request) -> Response:
        """``GET`` a counter's value, or ``POST`` to add ``by`` (default 1) to it."""
        try:
            key = parse_channel(f"{NAMESPACE}:{request.path_params['name']}")
            by = int(request.query_params.get("by", "1"))
        except (BadRequest, ValueError) as exc:
            return JSONResponse({"error": str(exc)}, 400)
        try:
            async with realtime.keys.hold(key) as place:
                if isinstance(place, Moved):  # the owner's tidings URL names its root
                    owner = place.url.removesuffix(MOUNT)
                    return RedirectResponse(owner + request.url.path + _query(request), 307)
                if request.method == "POST":
                    async with counters.locks[key]:  # one change at a time, in order
                        counters.values[key] += by
                        await realtime.publish(key, {"value": counters.values[key]})
                value = counters.values[key]
        except Unavailable as exc:
            return JSONResponse({"error": exc.message}, 503)
        return JSONResponse({"counter": key, "value": value, "node": settings.node_id})

    return Starlette(
        routes=[
            Route("/counters/{name}", counter, methods=["GET", "POST"]),
            Mount(MOUNT, app=realtime),
        ],
        lifespan=realtime.lifespan,
    )


def _query(request: Request) -> str:
    query = request.url.query
    return f"?{query}" if query else ""


def main() -> None:
    """Run one node: ``TIDINGS_*`` settings from the environment, the store at
    ``COUNTER_DB``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    arguments = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # each call to etcd
    settings = load_settings(
        environ=os.environ, arguments={"host": arguments.host, "port": arguments.port}
    )
    store = CounterStore(Path(os.environ.get("COUNTER_DB", "counters.sqlite3")))
    app = create_app(settings, store)
    uvicorn.run(app, host=arguments.host, port=arguments.port, log_level="info")


if __name__ == "__main__":
    main()
