"""The status page in real Chromium: it is fed over tidings itself and its figures move."""

from __future__ import annotations

import asyncio
import re
from importlib import metadata

import httpx
from playwright.async_api import Browser, expect

from tests.browser.conftest import ARTIFACTS, PAGE_TIMEOUT_MS, PageFactory, api_headers
from tests.support.server import ServerProcess, start_server

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


async def test_the_status_page_of_a_node_without_demo_requests_nothing_that_fails(
    browser: Browser,
) -> None:
    server = await asyncio.to_thread(start_server)
    context = await browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    failures: list[str] = []
    page.on(
        "response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None
    )
    page.on("requestfailed", lambda r: failures.append(f"failed {r.url} {r.failure}"))
    try:
        await page.goto(f"{server.http_url}/status")
        await expect(page.locator("#state")).to_have_attribute("data-state", "connected")
        await expect(page.locator("#publications-total")).to_have_text(WHOLE_NUMBER)
        await expect(page.locator("#version")).to_have_text(metadata.version("tidings"))
        await expect(page.locator("#broker")).to_have_text("memory")
        await expect(page.locator("#node")).to_have_text(re.compile(r"^\S+$"))
        await expect(page.locator("#uptime")).to_have_text(re.compile(r"^\d+ s$|min"))
        # Each chart has a y scale and a time axis.
        await expect(page.locator("#publications .y-max")).to_have_text(re.compile(r"^\d+$"))
        await expect(page.locator("#publications .x-axis")).to_contain_text("now")
        await page.wait_for_load_state("networkidle")
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=ARTIFACTS / "status-without-demo.png", full_page=True)
    finally:
        await context.close()
        server.kill()
    assert failures == []


async def test_the_status_page_of_a_node_requiring_tokens_says_how_to_open_it(
    browser: Browser,
) -> None:
    server = await asyncio.to_thread(
        start_server, env={"TIDINGS_JWT_SECRET": "a-secret-long-enough-for-hs256-tokens-1234"}
    )
    context = await browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = await context.new_page()
    try:
        await page.goto(f"{server.http_url}/status")
        await expect(page.locator("#state")).to_have_attribute("data-state", "failed")
        await expect(page.locator("#error")).to_contain_text("requires a token")
        await expect(page.locator("#error")).to_contain_text("/status?token=")
    finally:
        await context.close()
        server.kill()
