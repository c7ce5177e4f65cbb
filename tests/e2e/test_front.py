"""The front door of a node: ``/`` (HTML, or JSON when asked), the start-up line, the
client's files under ``/static`` with the transports' origin rule, and ``/health``'s
answer to a browser page (docs/server.md, docs/browser.md)."""

from __future__ import annotations

from collections.abc import Iterator
from importlib import metadata

import httpx
import pytest

from tests.e2e.conftest import ALLOWED_ORIGIN
from tests.support.server import ServerProcess, start_server

REFUSED_ORIGIN = "http://refused.example:8401"


@pytest.fixture(scope="module")
def demo_node() -> Iterator[ServerProcess]:
    """A node started with ``--demo``."""
    process = start_server(extra=["--demo"])
    try:
        yield process
    finally:
        process.kill()


async def test_the_front_page_is_html_with_the_version_and_the_pages(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/", headers={"Accept": "text/html,*/*;q=0.8"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    assert metadata.version("tidings") in page
    for link in ('href="status"', 'href="health"', 'href="metrics"', 'href="static/tidings.js"'):
        assert link in page
    assert "docs/browser.md" in page
    assert 'href="demo"' not in page  # no demo on this node


async def test_the_front_page_is_json_when_asked(http: httpx.AsyncClient) -> None:
    response = await http.get("/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "tidings"
    assert body["version"] == metadata.version("tidings")
    assert body["broker"] == "memory"
    assert body["node"]
    assert isinstance(body["uptime_s"], int)
    assert body["links"]["status"] == "status"
    assert body["links"]["health"] == "health"
    assert "demo" not in body["links"]
    assert "README.md" in body["docs"]


async def test_a_demo_node_links_its_demo_and_logs_its_pages(demo_node: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=demo_node.http_url) as http:
        body = (await http.get("/", headers={"Accept": "application/json"})).json()
        page = (await http.get("/")).text
    assert body["links"]["demo"] == "demo"
    assert 'href="demo"' in page
    [line] = [line for line in demo_node.log if "pages:" in line]
    root = f"{demo_node.http_url}/"
    assert f"tidings {metadata.version('tidings')}" in line
    assert "broker memory" in line
    for page_url in (root, f"{root}demo", f"{root}status", f"{root}health"):
        assert page_url in line


async def test_static_files_follow_the_origin_rule(http: httpx.AsyncClient) -> None:
    allowed = await http.get("/static/tidings.js", headers={"Origin": ALLOWED_ORIGIN})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "origin" in allowed.headers["vary"].lower()

    no_origin = await http.get("/static/tidings.js")
    assert no_origin.status_code == 200
    assert "access-control-allow-origin" not in no_origin.headers

    refused = await http.get("/static/tidings.js", headers={"Origin": REFUSED_ORIGIN})
    assert refused.status_code == 403
    assert "allowed_origins" in refused.json()["error"]["message"]
    assert "access-control-allow-origin" not in refused.headers

    same = str(http.base_url).rstrip("/")
    assert (await http.get("/static/core.js", headers={"Origin": same})).status_code == 200


async def test_the_typescript_declarations_are_served(http: httpx.AsyncClient) -> None:
    response = await http.get("/static/tidings.d.ts", headers={"Origin": ALLOWED_ORIGIN})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.headers["access-control-allow-origin"] == ALLOWED_ORIGIN
    assert "export class Tidings" in response.text


async def test_health_tells_a_page_whether_its_origin_may_connect(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.get("/health")).json() == {"status": "ok"}
    for origin, allowed in ((ALLOWED_ORIGIN, True), (REFUSED_ORIGIN, False)):
        response = await http.get("/health", headers={"Origin": origin})
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "origin_allowed": allowed}
        assert response.headers["access-control-allow-origin"] == "*"
