"""The front door of a node: ``GET /`` (what this node is and where its pages are), the
one start-up line that says the same, ``/health``'s answer to a browser, and the
client's files under ``/static`` served with the transports' origin rule.

HTTP I/O through Starlette; the facts (version, broker, links) are computed once.
"""

from __future__ import annotations

import html
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tidings.core.origin import is_origin_allowed
from tidings.server.metrics import TIDINGS_VERSION
from tidings.server.settings import Settings
from tidings.transports.http import cors_headers, error_response, json_response

# Where the documentation lives: paths in the tidings repository (a node needs no
# network to say where to read; the reader's clone or the repository's web page has them).
DOCS: Final = (
    ("README.md", "quick start, settings, how it is built"),
    ("docs/browser.md", "the JavaScript client"),
    ("docs/demo.md", "the chat demo"),
    ("docs/metrics.md", "/metrics and the status page"),
    ("docs/protocol.md", "the wire protocol"),
    ("docs/configuration.md", "every setting"),
)
TYPESCRIPT_CONTENT_TYPE: Final = "text/plain; charset=utf-8"
ORIGIN_REFUSED: Final = "this origin is not in the node's allowed_origins"


def broker_label(settings: Settings) -> str:
    """Return which broker the settings name, fit to show: a URL without its password."""
    if settings.broker:
        parts = urlsplit(settings.broker)
        if parts.password is None:
            return settings.broker
        netloc = f"{parts.username or ''}:***@{parts.hostname or ''}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))
    if settings.data:
        return f"sqlite ({settings.data})"
    return "memory"


@dataclass(frozen=True, slots=True)
class About:
    """What a node says about itself on ``/``, ``/status`` and at start-up."""

    version: str
    broker: str
    node_id: str
    demo: bool
    started_s: float  # time.monotonic() when the node was built

    @classmethod
    def of(cls, settings: Settings, node_id: str) -> About:
        """Return the facts of a node with these settings."""
        return cls(
            TIDINGS_VERSION, broker_label(settings), node_id, settings.demo, time.monotonic()
        )

    def uptime_s(self) -> int:
        """Whole seconds since the node was built."""
        return int(time.monotonic() - self.started_s)

    def links(self) -> dict[str, str]:
        """The node's pages, relative to its root (so they work under any mount path)."""
        pages = {"status": "status", "health": "health", "ready": "ready", "metrics": "metrics"}
        if self.demo:
            pages = {"demo": "demo", **pages}
        return {**pages, "client": "static/tidings.js", "types": "static/tidings.d.ts"}

    def startup_line(self, host: str, port: int) -> str:
        """The one INFO line naming the version, broker, address and pages."""
        root = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        pages = " ".join(f"{root}{path}" for name, path in self.links().items() if name != "types")
        return f"tidings {self.version}, broker {self.broker}, at {root}; pages: {pages}"


def front_page(about: About) -> Callable[[Request], Awaitable[Response]]:
    """Return the handler of ``GET /``: HTML, or JSON for ``Accept: application/json``."""

    async def page(request: Request) -> Response:
        accept = request.headers.get("accept", "")
        if "application/json" in accept and "text/html" not in accept:
            return json_response(
                {
                    "name": "tidings",
                    "version": about.version,
                    "node": about.node_id,
                    "broker": about.broker,
                    "uptime_s": about.uptime_s(),
                    "links": about.links(),
                    "docs": [path for path, _ in DOCS],
                }
            )
        return HTMLResponse(_html(about), headers={"Cache-Control": "no-cache"})

    return page


def _html(about: About) -> str:
    def item(name: str, path: str) -> str:
        return f'<li><a href="{html.escape(path)}">/{html.escape(path)}</a> {name}</li>'

    described = {
        "demo": "the chat demo",
        "status": "this node's live figures",
        "health": "liveness (JSON)",
        "ready": "readiness: broker reachable, not draining (JSON)",
        "metrics": "Prometheus metrics",
        "client": "the JavaScript client (ES module)",
        "types": "its TypeScript declarations",
    }
    pages = "\n".join(item(described[name], path) for name, path in about.links().items())
    docs = "\n".join(
        f"<li><code>{html.escape(path)}</code> {html.escape(what)}</li>" for path, what in DOCS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <link rel="icon" href="data:,">
  <title>tidings {html.escape(about.version)}</title>
  <link rel="stylesheet" href="static/demo.css">
</head>
<body>
  <header><h1>tidings <small id="version">{html.escape(about.version)}</small></h1></header>
  <section class="card">
    <p>A real-time update server: WebSocket, Server-Sent Events, long and short polling.
      Node <code id="node">{html.escape(about.node_id)}</code>, broker
      <code id="broker">{html.escape(about.broker)}</code>.</p>
    <h2>Pages</h2>
    <ul class="links" id="pages">
{pages}
    </ul>
  </section>
  <section class="card">
    <h2>Documentation <small>in the tidings repository</small></h2>
    <ul class="links" id="docs">
{docs}
    </ul>
  </section>
</body>
</html>
"""


def health_response(request: Request, allowed: Collection[str]) -> Response:
    """``GET /health``: ``{"status": "ok"}``, readable from any origin, and for a browser
    page (a request with ``Origin``) also whether that origin may connect.

    The JavaScript client asks this when a cross-origin transport failed: a browser hides
    why (a refused WebSocket handshake and a CORS failure look like a network error), and
    this answer tells a refused origin from a node that is down.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return json_response({"status": "ok"})
    host = request.headers.get("host")
    permitted = is_origin_allowed(origin, host, request.url.scheme, allowed)
    # Any page may read this (it tells nothing secret); credentials are never involved.
    return json_response(
        {"status": "ok", "origin_allowed": permitted},
        headers={"Access-Control-Allow-Origin": "*", "Vary": "Origin"},
    )


class OriginCheckedStatic:
    """An ASGI wrapper serving static files with the transports' origin rule (docs/protocol.md
    §8): a page from an allowed origin gets CORS headers (so it may ``import`` the
    client), a page from any other origin a 403 that says why; no ``Origin``, no check."""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self._app = app
        self._allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        if not is_origin_allowed(origin, headers.get("host"), scope["scheme"], self._allowed):
            await error_response("permission_denied", ORIGIN_REFUSED)(scope, receive, send)
            return
        cors = cors_headers(origin, self._allowed)
        # mimetypes guesses .ts as a video stream or a Qt translation file.
        declarations = scope["path"].endswith(".d.ts")
        if not cors and not declarations:
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in cors.items():
                    response_headers[name] = value
                if declarations and message["status"] == HTTPStatus.OK:
                    response_headers["Content-Type"] = TYPESCRIPT_CONTENT_TYPE
            await send(message)

        await self._app(scope, receive, send_with_headers)
