"""What a node says about itself (server/front.py): the broker named without secrets,
the links of its front page, the start-up line, and the facts on /status."""

from __future__ import annotations

import httpx

from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.front import About, broker_label


def test_a_broker_url_is_shown_without_its_password() -> None:
    label = broker_label(Settings(broker="redis://user:s3cret@redis.local:6380/0"))
    assert "s3cret" not in label
    assert label == "redis://user:***@redis.local:6380/0"
    assert broker_label(Settings(broker="redis://redis.local:6379")) == "redis://redis.local:6379"
    assert broker_label(Settings()) == "memory"
    assert broker_label(Settings(data="/var/lib/tidings")) == "sqlite (/var/lib/tidings)"


def test_the_links_name_the_demo_only_when_it_is_on() -> None:
    assert "demo" not in About.of(Settings(), "n1").links()
    assert About.of(Settings(demo=True), "n1").links()["demo"] == "demo"


def test_the_start_up_line_names_version_broker_address_and_pages() -> None:
    about = About.of(Settings(demo=True), "n1")
    line = about.startup_line("0.0.0.0", 8080)
    assert line.startswith(f"tidings {about.version}, broker memory, at http://0.0.0.0:8080/;")
    for page in ("demo", "status", "health", "metrics"):
        assert f"http://0.0.0.0:8080/{page}" in line


async def test_the_status_page_says_whether_the_node_mints_demo_tokens() -> None:
    for demo, said in ((False, "off"), (True, "on")):
        app = TidingsApp(Settings(demo=demo))
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
                page = (await http.get("/status")).text
        finally:
            await app.stop()
        assert f'<meta name="tidings-demo" content="{said}">' in page
        assert f'<dd id="version">{app.about.version}</dd>' in page
        assert f'<dd id="node">{app.context.node_id}</dd>' in page
        assert "__TIDINGS_" not in page  # every placeholder filled
