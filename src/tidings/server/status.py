"""The status page: this node's figures, published every second into a tidings channel.

I/O: one asyncio task per node publishes through the hub; ``GET /status`` serves the
page, which subscribes to that channel with the JavaScript client like any other page
(the server eats its own cooking). The channel is ``tidings:status@<node id>``: one
per node, so nodes sharing a broker never mix their figures. Nothing is published
while no connection of this node holds the channel, so an unwatched node pays one
timer tick per second and nothing else.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Final

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.channel_heat import ChannelRate
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions
from tidings.core.wire import encode_json
from tidings.errors import ErrorCode, TidingsError
from tidings.hub.hub import Hub
from tidings.server.front import About
from tidings.server.hot_channels import HOT_CHANNELS_STATUS_TOP, rate_fields
from tidings.server.metrics import Metrics, NodeFigures
from tidings.server.settings import Settings

logger = logging.getLogger(__name__)

STATIC_DIR: Final = Path(__file__).parent / "static"  # served at /static
STATUS_NAMESPACE: Final = NamespaceName("tidings")
STATUS_INTERVAL_S: Final = 1.0
# Enough history for a page that reconnects to redraw the last minute.
STATUS_HISTORY: Final = HistoryOptions(size=60, ttl_ms=60_000)
_CHANNEL_PLACEHOLDER: Final = "__TIDINGS_STATUS_CHANNEL__"


def status_channel(node_id: str) -> ChannelName:
    """Return the status channel of node ``node_id``."""
    return ChannelName(f"{STATUS_NAMESPACE}:status@{node_id}")


def with_status_namespace(settings: Settings) -> Settings:
    """Return ``settings`` with the ``tidings`` namespace, unless it is configured already.

    It takes the default namespace's policy (a node whose channels need tokens keeps its
    figures behind tokens too), keeps a minute of history and refuses client publishing.
    """
    if STATUS_NAMESPACE in settings.namespaces:
        return settings
    default = settings.namespace_table().options_for(ChannelName("status"))
    options = NamespaceOptions(policy=default.policy, history=STATUS_HISTORY)
    return replace(settings, namespaces={**settings.namespaces, STATUS_NAMESPACE: options})


def status_data(
    figures: NodeFigures,
    previous: NodeFigures | None,
    elapsed_s: float,
    hot: Sequence[ChannelRate] = (),
) -> bytes:
    """Return the JSON of one status publication (rates since ``previous``; ``hot``:
    the busiest channels of the last hot-channel window)."""

    def rate(now: int, before: int) -> float:
        return round((now - before) / elapsed_s, 2) if elapsed_s > 0 else 0.0

    before = previous or figures
    return encode_json(
        {
            "connections": figures.connections,
            "channels": figures.channels,
            "subscriptions": figures.subscriptions,
            "publications": figures.publications,
            "deliveries": figures.deliveries,
            "publications_per_s": rate(figures.publications, before.publications),
            "deliveries_per_s": rate(figures.deliveries, before.deliveries),
            "hot_channels": [{"channel": r.channel, **rate_fields(r)} for r in hot],
        }
    )


class StatusPublisher:
    """Publishes the node's figures every ``interval_s`` while someone watches."""

    def __init__(
        self, hub: Hub, metrics: Metrics, node_id: str, interval_s: float = STATUS_INTERVAL_S
    ) -> None:
        self.channel = status_channel(node_id)
        self._hub = hub
        self._metrics = metrics
        self._interval_s = interval_s
        self._previous: NodeFigures | None = None
        self._previous_s = time.monotonic()

    async def run(self) -> None:
        """Tick every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.tick()
            except Exception:  # a task boundary: log, and tick again next time
                logger.exception("status tick failed")

    async def tick(self) -> bool:
        """Take the figures and publish them if the channel is watched; whether it was."""
        now_s = time.monotonic()
        figures = self._metrics.figures()
        previous, previous_s = self._previous, self._previous_s
        self._previous, self._previous_s = figures, now_s
        if not self._hub.has_subscribers(self.channel):  # no local subscriber of the channel
            return False
        heat = self._hub.heat
        hot = heat.top(HOT_CHANNELS_STATUS_TOP) if heat is not None else ()
        data = status_data(figures, previous, now_s - previous_s, hot)
        try:
            await self._hub.publish(self.channel, data)
        except TidingsError as exc:
            logger.warning("status not published: %s", exc)
            return False
        return True


_page_template: str | None = None


def _page() -> str:
    global _page_template  # noqa: PLW0603 - read once from the package, then kept
    if _page_template is None:
        _page_template = (STATIC_DIR / "status.html").read_text(encoding="utf-8")
    return _page_template


def status_page(channel: ChannelName, about: About) -> Callable[[Request], Awaitable[Response]]:
    """Return the handler of ``GET /status`` for a node whose status goes to ``channel``.

    The page is told what it shows besides the figures (version, broker, node, uptime)
    and whether the node mints demo tokens, so that it never asks a ``/demo/token``
    that is not there.
    """

    async def page(_request: Request) -> Response:
        facts = {
            _CHANNEL_PLACEHOLDER: channel,
            "__TIDINGS_VERSION__": about.version,
            "__TIDINGS_BROKER__": about.broker,
            "__TIDINGS_NODE__": about.node_id,
            "__TIDINGS_UPTIME_S__": str(about.uptime_s()),
            "__TIDINGS_DEMO__": "on" if about.demo else "off",
        }
        text = _page()
        for placeholder, value in facts.items():
            text = text.replace(placeholder, html.escape(value))
        return HTMLResponse(text, headers={"Cache-Control": "no-cache"})

    return page


class StaticAssets:
    """The files served under ``/static`` (the JavaScript client, the status page's).

    Starlette's ``StaticFiles`` raises ``HTTPException`` for a missing file; a bare
    ``Router`` has no handler for it, so it would reach the server as a failure (500
    and a traceback). A missing file is a 404 in the error shape of docs/protocol.md §7.
    """

    def __init__(self) -> None:
        self._files = StaticFiles(directory=STATIC_DIR, follow_symlink=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._files(scope, receive, send)
        except HTTPException as exc:
            code: ErrorCode = "not_found" if exc.status_code == 404 else "bad_request"
            message = "no such file under /static" if code == "not_found" else exc.detail
            body = encode_json({"error": {"code": code, "message": message}})
            headers = {**(exc.headers or {}), "content-type": "application/json"}
            await Response(body, exc.status_code, headers)(scope, receive, send)
