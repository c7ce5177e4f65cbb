"""The status page in real Chromium: it is fed over tidings itself and its figures move."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import expect

from tests.browser.conftest import PAGE_TIMEOUT_MS, PageFactory, api_headers
from tests.support.server import ServerProcess

expect.set_options(timeout=PAGE_TIMEOUT_MS)

WHOLE_NUMBER = re.compile(r"^\d+$")
TWO_POINTS_AT_LEAST = re.compile(r"^[\d.e-]+,[\d.e-]+( [\d.e-]+,[\d.e-]+)+$")


async def test_the_status_page_counters_move(
    demo_server: ServerProcess, open_page: PageFactory
) -> None:
    page = await open_page(f"{demo_server.http_url}/status")
    await expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    total = page.locator("#publications-total")
    await expect(total).to_have_text(WHOLE_NUMBER)
    before = int(await total.inner_text())

    async with httpx.AsyncClient(base_url=demo_server.http_url) as http:
        for n in range(5):
            body = {"channel": "room:status", "data": {"n": n}}
            response = await http.post("/api/publish", json=body, headers=api_headers())
            assert response.status_code == 200

    await page.wait_for_function(
        "(least) => Number(document.getElementById('publications-total').textContent) >= least",
        arg=before + 5,
    )
    # This page's own WebSocket is the node's one connection, its channel the one channel.
    await expect(page.locator("#ws .value")).to_have_text("1")
    await expect(page.locator("#channels .value")).to_have_text("1")
    await expect(page.locator("#publications polyline")).to_have_attribute(
        "points", TWO_POINTS_AT_LEAST
    )
