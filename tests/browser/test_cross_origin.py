"""The JavaScript client on a page of another origin than the node (docs/browser.md):
imported from the node's /static and chatting when that origin is allowed; told, with
an ``error`` event, when it is not (instead of trying transports forever)."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from playwright.async_api import expect

from tests.browser.conftest import PAGE_TIMEOUT_MS, DemoServers, PageFactory, api_headers
from tests.support.server import ServerProcess

expect.set_options(timeout=PAGE_TIMEOUT_MS)

CLIENT_DIR = Path(__file__).resolve().parents[2] / "clients" / "js"

# The page under test: imports the client from `client` (a URL), connects to `node`
# with `token`, and shows what it receives, its state and its errors.
PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>another origin</title></head>
<body>
<p>state: <span id="state">idle</span> <span id="transport"></span></p>
<p>import: <span id="import">pending</span></p>
<ol id="received"></ol>
<p id="error"></p>
<script type="module">
  const params = new URLSearchParams(location.search);
  let Tidings;
  try {
    ({ Tidings } = await import(params.get("client")));
    document.getElementById("import").textContent = "ok";
  } catch (error) {
    document.getElementById("import").textContent = `failed: ${error}`;
  }
  if (Tidings) {
    const client = new Tidings(params.get("node"), { token: params.get("token") });
    window.client = client;
    client.on("state", ({ state, transport }) => {
      document.getElementById("state").textContent = state;
      document.getElementById("transport").textContent = transport ?? "";
    });
    client.on("publication", (p) => {
      const item = document.createElement("li");
      item.textContent = `${p.info?.user ?? "backend"}: ${p.data.text}`;
      document.getElementById("received").append(item);
    });
    client.on("error", (error) => {
      const shown = document.getElementById("error");
      shown.dataset.code = error.code;
      shown.textContent = error.message;
    });
    client.subscribe("room:cross");
    client.connect();
  }
</script>
</body></html>
"""


async def demo_token(server: ServerProcess, name: str) -> str:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post("/demo/token", json={"name": name})
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token


def page_url(origin: str, client: str, server: ServerProcess, token: str) -> str:
    query = httpx.QueryParams({"client": client, "node": server.http_url, "token": token})
    return f"{origin}/page.html?{query}"


async def test_a_page_of_an_allowed_origin_imports_the_client_from_the_node_and_chats(
    demo_servers: DemoServers, second_origin: tuple[str, Path], open_page: PageFactory
) -> None:
    origin, root = second_origin
    server = await demo_servers(env={"TIDINGS_ALLOWED_ORIGINS": origin})
    (root / "page.html").write_text(PAGE)
    token = await demo_token(server, "ann")
    page = await open_page(page_url(origin, f"{server.http_url}/static/tidings.js", server, token))
    await expect(page.locator("#import")).to_have_text("ok")
    await expect(page.locator("#state")).to_have_text("connected")
    await expect(page.locator("#transport")).to_have_text("ws")

    await page.evaluate("client.publish('room:cross', {text: 'hello from another origin'})")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        body = {"channel": "room:cross", "data": {"text": "hello back"}}
        response = await http.post("/api/publish", json=body, headers=api_headers())
        assert response.status_code == 200, response.text
    await expect(page.locator("#received li")).to_have_text(
        ["ann: hello from another origin", "backend: hello back"]
    )
    await expect(page.locator("#error")).to_have_text("")


async def test_a_page_of_a_refused_origin_gets_an_error_event_saying_so(
    demo_servers: DemoServers, second_origin: tuple[str, Path], open_page: PageFactory
) -> None:
    origin, root = second_origin
    server = await demo_servers()  # allowed_origins is empty: only the node's own pages
    (root / "page.html").write_text(PAGE)
    # The node's /static refuses this origin too: the page bundles its own copy of the
    # client, as an application installed from the repository does.
    for name in ("tidings.js", "core.js"):
        shutil.copy(CLIENT_DIR / name, root / name)
    token = await demo_token(server, "bob")

    from_node = await open_page(
        page_url(origin, f"{server.http_url}/static/tidings.js", server, token)
    )
    await expect(from_node.locator("#import")).to_contain_text("failed")

    page = await open_page(page_url(origin, "./tidings.js", server, token))
    await expect(page.locator("#import")).to_have_text("ok")
    await expect(page.locator("#error")).to_have_attribute("data-code", "origin_refused")
    await expect(page.locator("#error")).to_contain_text(
        f"origin {origin} is not in the node's allowed_origins"
    )
    await expect(page.locator("#state")).to_have_text("failed")
