"""The chat demo in real Chromium: chatting over each transport, surviving a server
restart with nothing lost or repeated, falling back when WebSocket is off, presence."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
import websockets
from playwright.async_api import Locator, Page, expect

from tests.browser.conftest import PAGE_TIMEOUT_MS, DemoServers, PageFactory, api_headers
from tests.support.server import ServerProcess

TRANSPORTS = ["ws", "sse", "longpoll"]

expect.set_options(timeout=PAGE_TIMEOUT_MS)


async def join(
    open_page: PageFactory,
    server: ServerProcess,
    name: str,
    room: str,
    transport: str | None = None,
) -> Page:
    """Open the demo as ``name`` in ``room`` and wait until it is connected there."""
    query = {"name": name, "room": room, **({"transport": transport} if transport else {})}
    page = await open_page(f"{server.http_url}/demo?{urlencode(query)}")
    await expect(page.locator("#room-title")).to_have_text(f"#{room}")
    await expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    return page


async def say(page: Page, text: str) -> None:
    """Send ``text`` from the page's message box."""
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")
    await expect(page.locator("#text")).to_have_value("")  # sent, not put back on failure


def messages(page: Page) -> Locator:
    """The texts of the messages the page shows, in order."""
    return page.locator("#messages li.message .text")


async def publish(server: ServerProcess, channel: str, texts: list[str]) -> None:
    """Publish each text through the server API, as the application's backend would."""
    async with httpx.AsyncClient(base_url=server.http_url, timeout=30.0) as http:
        for text in texts:
            body = {"channel": channel, "data": {"text": text, "user": "backend"}}
            response = await http.post("/api/publish", json=body, headers=api_headers())
            assert response.status_code == 200, response.text


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_two_pages_chat_in_one_room(
    demo_server: ServerProcess, open_page: PageFactory, transport: str
) -> None:
    ann = await join(open_page, demo_server, "ann", f"chat-{transport}", transport)
    bob = await join(open_page, demo_server, "bob", f"chat-{transport}", transport)
    for page in (ann, bob):
        await expect(page.locator("#transport")).to_have_text(transport)

    await say(ann, "hello from ann")
    await expect(messages(bob)).to_have_text(["hello from ann"])
    await say(bob, "hello from bob")

    conversation = ["hello from ann", "hello from bob"]
    for page in (ann, bob):
        await expect(messages(page)).to_have_text(conversation)
    await expect(bob.locator("#messages li.message .who")).to_have_text(["ann", "bob"])


async def test_a_mention_notifies_the_user_on_their_own_channel(
    demo_server: ServerProcess, open_page: PageFactory
) -> None:
    ann = await join(open_page, demo_server, "ann", "mentions", "ws")
    bob = await join(open_page, demo_server, "bob", "lobby", "sse")
    await say(ann, "@bob look at this")
    notifications = bob.locator("#notifications li")
    await expect(notifications).to_have_text(["@ann in #mentions: @bob look at this"])
    await expect(ann.locator("#notifications li")).to_have_count(0)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_messages_published_during_a_restart_are_shown_once(
    demo_servers: DemoServers, open_page: PageFactory, tmp_path: Path, transport: str
) -> None:
    data = tmp_path / "data"
    server = await demo_servers(data=data)
    page = await join(open_page, server, "ann", "restart", transport)
    await say(page, "before the restart")
    await expect(messages(page)).to_have_text(["before the restart"])

    await asyncio.to_thread(server.stop)
    await expect(page.locator("#state")).not_to_have_attribute("data-state", "connected")
    server = await demo_servers(data=data, port=server.port)
    # Published as soon as the node is back, whether or not the page is yet.
    await publish(server, "room:restart", ["while away 1", "while away 2", "while away 3"])

    await expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    await say(page, "after the restart")
    await expect(messages(page)).to_have_text(
        [
            "before the restart",
            "while away 1",
            "while away 2",
            "while away 3",
            "after the restart",
        ]
    )
    await expect(page.locator("#transport")).to_have_text(transport)
    await expect(page.locator("#notice")).to_be_hidden()  # no gap: history survived


async def test_a_restart_that_lost_history_is_told_and_the_room_reloaded(
    demo_servers: DemoServers, open_page: PageFactory
) -> None:
    server = await demo_servers()  # the memory broker: a restart loses every history
    page = await join(open_page, server, "ann", "amnesia", "ws")
    await say(page, "soon forgotten")
    await expect(messages(page)).to_have_text(["soon forgotten"])

    await asyncio.to_thread(server.stop)
    await expect(page.locator("#state")).not_to_have_attribute("data-state", "connected")
    server = await demo_servers(port=server.port)
    await publish(server, "room:amnesia", ["in a new epoch"])

    await expect(page.locator("#notice")).to_be_visible()
    await expect(messages(page)).to_have_text(["in a new epoch"])


async def test_the_page_falls_back_to_sse_when_websocket_is_disabled(
    demo_servers: DemoServers, open_page: PageFactory
) -> None:
    server = await demo_servers(env={"TIDINGS_TRANSPORTS": "sse,poll"})
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(server.ws_url):
            pass
    assert refused.value.response.status_code == 403

    ann = await join(open_page, server, "ann", "fallback")  # no transport forced
    bob = await join(open_page, server, "bob", "fallback")
    for page in (ann, bob):
        await expect(page.locator("#transport")).to_have_text("sse")
    await say(ann, "still here without websockets")
    await expect(messages(bob)).to_have_text(["still here without websockets"])


async def test_presence_updates_when_a_page_closes(
    demo_server: ServerProcess, open_page: PageFactory
) -> None:
    ann = await join(open_page, demo_server, "ann", "presence", "ws")
    bob = await join(open_page, demo_server, "bob", "presence", "ws")
    await expect(ann.locator("#online li")).to_have_text(["ann (you)", "bob"])
    await expect(bob.locator("#online li")).to_have_text(["ann", "bob (you)"])

    await bob.close()
    await expect(ann.locator("#online li")).to_have_text(["ann (you)"])
    await expect(ann.locator("#online-count")).to_have_text(re.compile(r"\(1\)"))
