"""A real app in a real headless Chromium: the server runs as `canopy app` on a
free port over a seeded store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app_fixtures import seed_database

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = ROOT / "test-output" / "screenshots"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

try:
    from playwright.sync_api import Browser, Page, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [pytest.mark.browser]


def _skip_reason() -> str | None:
    if sync_playwright is None:
        return "playwright is not installed (pip install playwright; no browser download needed)"
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class AppServer:
    def __init__(self, db_url: str, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "canopy", "app", "--db", db_url, "--port", str(self.port)]
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, "CANOPY_DB": db_url},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_healthy(self, timeout_s: float = 90) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the app exited with code {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise TimeoutError("the app did not become healthy")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    if reason := _skip_reason():
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def seeded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    if reason := _skip_reason():
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("e2e")
    info = seed_database(folder / "seeded.db")
    server = AppServer(info.url, folder / "app.log")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = context.new_page()
    yield page
    context.close()


def wait_idle(page: Page, timeout_ms: int = 60000) -> None:
    """Until Streamlit has run the script: a heading is drawn and the "running"
    status widget has stayed away for a second (it appears only after a moment)."""
    page.wait_for_selector('[data-testid="stApp"] h1', timeout=timeout_ms)
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        running = page.locator('[data-testid="stStatusWidgetRunningIcon"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:
            return
        page.wait_for_timeout(200)
    raise TimeoutError("the app kept running")


MAIN_HEIGHT_JS = """() => {
    const main = document.querySelector('[data-testid="stMain"]');
    return main ? main.scrollHeight : 0;
}"""


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    # The app scrolls inside its main pane, not the page: grow the window to fit it.
    viewport = page.viewport_size
    height = page.evaluate(MAIN_HEIGHT_JS)
    page.set_viewport_size(
        {"width": viewport["width"], "height": max(viewport["height"], min(int(height), 6000))}
    )
    page.wait_for_timeout(1500)  # charts redraw at the new size
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(viewport)
    return path


def assert_no_errors(page: Page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()
    assert "could not handle" not in page.inner_text("body")
