"""Fixtures for browser tests: Debian's Chromium driven headless by Playwright, and
demo servers (real ``tidings serve --demo`` processes on free loopback ports).

Chromium is never downloaded: the tests use ``/usr/bin/chromium`` (``apt-get install
chromium``). Without it, or without Playwright, a test is skipped with the reason
locally and fails under ``CI=true`` (tests/support/services.py). Every page a test
opens is screenshotted into ``test-artifacts/browser/`` when the test ends, pass or fail.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Final

import pytest

from tests.support.server import ServerProcess, start_server
from tests.support.services import missing

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM: Final = Path("/usr/bin/chromium")
CHROMIUM_ARGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS: Final = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"
API_KEY: Final = "browser-api-key"
# Waits for what a page shows: generous, since CI machines are slow; never a sleep.
PAGE_TIMEOUT_MS: Final = 20_000

PageFactory = Callable[[str], Awaitable["Page"]]


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing; install Debian's chromium (apt-get install chromium)")
    try:
        import playwright.async_api  # noqa: F401, PLC0415 - an optional dev dependency
    except ImportError:
        missing("playwright is not installed; pip install -e '.[dev]'")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """A headless Chromium of its own for one test."""
    _require_chromium()
    from playwright.async_api import async_playwright  # noqa: PLC0415 - optional

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def open_page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[PageFactory]:
    """Open a page at a URL, each in its own context (own cookies, own storage)."""
    pages: list[Page] = []

    async def open_at(url: str) -> Page:
        context = await browser.new_context()
        context.set_default_timeout(PAGE_TIMEOUT_MS)
        page = await context.new_page()
        number = len(pages) + 1
        page.on("pageerror", lambda error: errors.append(f"{page.url}: {error}"))
        # Shown by pytest when the test fails: what the page said, and what it fetched.
        page.on("console", lambda message: print(f"[page {number}] {message.text}"))
        page.on("requestfailed", lambda r: print(f"[page {number}] failed {r.url} {r.failure}"))
        pages.append(page)
        await page.goto(url)
        return page

    errors: list[str] = []
    try:
        yield open_at
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
        for number, page in enumerate(pages, start=1):
            if not page.is_closed():
                await page.screenshot(path=ARTIFACTS / f"{name}-{number}.png", full_page=True)
            await page.context.close()
    assert not errors, f"uncaught errors in pages: {errors}"


def serve_demo(
    *, data: Path | None = None, port: int | None = None, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start ``tidings serve --demo`` with the browser tests' API key."""
    return start_server(
        port=port,
        data=data,
        env={"TIDINGS_API_KEY": API_KEY, **(env or {})},
        extra=["--demo"],
    )


DemoServers = Callable[..., Awaitable[ServerProcess]]


@pytest.fixture
async def demo_servers() -> AsyncIterator[DemoServers]:
    """Start demo servers (``serve_demo``'s arguments), each killed when the test ends.

    Request it before ``open_page``: fixtures are torn down in the reverse order, so the
    pages are screenshotted while their servers still run.
    """
    _require_chromium()  # no server to start for a test that cannot run
    started: list[ServerProcess] = []

    async def start(**arguments: object) -> ServerProcess:
        process = await asyncio.to_thread(serve_demo, **arguments)  # type: ignore[arg-type]
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.kill()


@pytest.fixture
async def demo_server(demo_servers: DemoServers) -> ServerProcess:
    """A demo server on the memory broker (request it before ``open_page``)."""
    return await demo_servers()


def api_headers() -> dict[str, str]:
    """The server API's ``Authorization`` header for the browser tests' servers."""
    return {"Authorization": f"Bearer {API_KEY}"}


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass  # the test says what it fetched when it fails (open_page's console lines)


@pytest.fixture
def second_origin(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A tiny static HTTP server on a free loopback port: another origin than any node.
    Yields its URL (``http://127.0.0.1:<port>``) and the folder it serves."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(_QuietFiles, directory=str(root))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
