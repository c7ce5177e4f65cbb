"""The chat demo as people use it: one's own messages look different, an empty room says
so, a lost link shows "Reconnecting…" (Send disabled, presence marked stale), and on a
phone the conversation comes first. Screenshots go to test-artifacts/browser/."""

from __future__ import annotations

import asyncio
import re

from playwright.async_api import ViewportSize, expect

from tests.browser.conftest import ARTIFACTS, PAGE_TIMEOUT_MS, DemoServers, PageFactory
from tests.browser.test_demo import join, messages, say
from tests.support.server import ServerProcess

expect.set_options(timeout=PAGE_TIMEOUT_MS)

OWN = re.compile(r"\bown\b")
PHONE = ViewportSize(width=390, height=844)


async def test_ones_own_messages_look_different(
    demo_server: ServerProcess, open_page: PageFactory
) -> None:
    ann = await join(open_page, demo_server, "ann", "own")
    bob = await join(open_page, demo_server, "bob", "own", "sse")
    await say(ann, "mine")
    await expect(messages(bob)).to_have_text(["mine"])
    await say(bob, "yours")
    for page in (ann, bob):
        await expect(messages(page)).to_have_text(["mine", "yours"])
    items = "#messages li.message"
    await expect(ann.locator(items).nth(0)).to_have_class(OWN)
    await expect(ann.locator(items).nth(1)).not_to_have_class(OWN)
    await expect(bob.locator(items).nth(0)).not_to_have_class(OWN)
    await expect(bob.locator(items).nth(1)).to_have_class(OWN)
    # And it shows: not the same background as another's message.
    backgrounds = await ann.locator(items).evaluate_all(
        "items => items.map(item => getComputedStyle(item).backgroundColor)"
    )
    assert backgrounds[0] != backgrounds[1]


async def test_an_empty_room_says_so(demo_server: ServerProcess, open_page: PageFactory) -> None:
    page = await join(open_page, demo_server, "ann", "quiet")
    await expect(page.locator("#empty")).to_be_visible()
    await expect(page.locator("#empty")).to_contain_text("No messages in #quiet yet")
    await say(page, "first words")
    await expect(messages(page)).to_have_text(["first words"])
    await expect(page.locator("#empty")).to_be_hidden()


async def test_a_lost_link_shows_reconnecting_disables_send_and_marks_presence_stale(
    demo_servers: DemoServers, open_page: PageFactory
) -> None:
    server = await demo_servers()
    page = await join(open_page, server, "ann", "flaky")
    await expect(page.locator("#send-button")).to_be_enabled()
    await expect(page.locator("#online li")).to_have_text(["ann (you)"])
    await expect(page.locator("#link-status")).to_be_hidden()

    await asyncio.to_thread(server.kill)
    await expect(page.locator("#link-status")).to_be_visible()
    await expect(page.locator("#link-status")).to_have_text("Reconnecting…")
    await expect(page.locator("#send-button")).to_be_disabled()
    await expect(page.locator("#online")).to_have_class(re.compile(r"\bstale\b"))
    await page.locator("#text").fill("typed while away")
    await page.locator("#text").press("Enter")
    await expect(page.locator("#text")).to_have_value("typed while away")  # kept, not lost
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=ARTIFACTS / "demo-reconnecting.png", full_page=True)

    await demo_servers(port=server.port)
    await expect(page.locator("#state")).to_have_attribute("data-state", "connected")
    await expect(page.locator("#link-status")).to_be_hidden()
    await expect(page.locator("#send-button")).to_be_enabled()
    await expect(page.locator("#online")).not_to_have_class(re.compile(r"\bstale\b"))
    await page.locator("#text").press("Enter")
    await expect(messages(page)).to_have_text(["typed while away"])


async def test_on_a_phone_the_messages_come_first(
    demo_server: ServerProcess, open_page: PageFactory
) -> None:
    page = await join(open_page, demo_server, "ann", "pocket")
    await say(page, "small screen")
    await page.set_viewport_size(PHONE)
    room = await page.locator("#chat .room").bounding_box()
    rooms = await page.locator("#rooms").bounding_box()
    assert room is not None
    assert rooms is not None
    assert room["y"] < rooms["y"], (room, rooms)
    assert room["width"] <= PHONE["width"]

    await page.set_viewport_size(ViewportSize(width=1280, height=800))
    room = await page.locator("#chat .room").bounding_box()
    rooms = await page.locator("#rooms").bounding_box()
    assert room is not None
    assert rooms is not None
    assert rooms["x"] < room["x"]  # side by side on a wide screen, the rooms on the left
    await page.set_viewport_size(PHONE)  # the screenshot taken at the end: the phone's
