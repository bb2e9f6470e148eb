"""Click through the app in headless Chromium and keep screenshots of every page
(test-output/screenshots/)."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.app_fixtures import RoundsSeed, seed_rounds
from tests.e2e.conftest import AppServer, assert_no_errors, screenshot, wait_idle

pytestmark = [pytest.mark.browser]

PAGES = {
    "home": ("", "Canopy"),
    "search": ("search", "Search"),
    "trees": ("trees", "Trees"),
    "find": ("find", "Find"),
    "critics": ("critics", "Critics"),
    "labels": ("labels", "Labels"),
    "improve": ("improve", "Improve"),
    "rounds": ("rounds", "Rounds"),
    "data": ("data", "Data"),
}


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_loads(seeded_server: AppServer, page, name: str) -> None:
    path, title = PAGES[name]
    page.goto(f"{seeded_server.url}/{path}")
    wait_idle(page)
    page.get_by_role("heading", name=re.compile(title)).first.wait_for(timeout=30000)
    assert_no_errors(page)
    screenshot(page, f"page-{name}")


def node_heading(page) -> str:
    return page.locator("h4").filter(has_text=re.compile(r"^Node \d+")).first.inner_text()


def test_clicking_a_node_opens_its_detail(seeded_server: AppServer, page) -> None:
    page.goto(f"{seeded_server.url}/trees")
    wait_idle(page)
    assert node_heading(page).startswith("Node 0")
    # Only the explored tree's chart (the hidden compare tab draws charts too).
    selector = '[class*="st-key-trees-chart"] .scatterlayer path.point'
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{selector}')].some(p => p.getBoundingClientRect().width > 0)",
        timeout=30000,
    )
    points = page.locator(selector)
    # Click the deepest marker: a node (or a filtered sibling, which selects its
    # parent) that is not the root.
    boxes = [(box["y"], i) for i in range(points.count()) if (box := points.nth(i).bounding_box())]
    target = points.nth(max(boxes)[1])
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    page.wait_for_function(
        "() => [...document.querySelectorAll('h4')].some(h => /^Node [1-9]/.test(h.innerText))", timeout=30000
    )
    wait_idle(page)
    heading = node_heading(page)
    assert not heading.startswith("Node 0")
    body = page.inner_text("body")
    assert "Option text" in body and "The whole path" in body and "Rollouts from this node" in body
    assert_no_errors(page)
    screenshot(page, "trees-node-selected")


def test_a_link_opens_a_node_and_back_walks_back(seeded_server: AppServer, page) -> None:
    """A copied URL opens the same tree, node and colouring; a new selection is a
    new history entry, so the browser's back button returns to the previous one."""
    page.goto(f"{seeded_server.url}/trees?tree=2&node=3&color=q")
    wait_idle(page)
    assert node_heading(page) == "Node 3"
    assert "All 14 nodes as a table" in page.inner_text("body")  # tree 2 (tests/app_fixtures.py), not 1
    # The explore tab's colour control (the hidden compare tab has one too); waits until drawn.
    page.locator("button[aria-checked] >> visible=true").filter(has_text=re.compile(r"^Value$")).first.click()
    page.wait_for_url(re.compile(r"color=value"), timeout=30000)
    wait_idle(page)
    page.go_back()
    page.wait_for_url(re.compile(r"color=q"), timeout=30000)
    wait_idle(page)
    colours = {"Combined", "Value", "PRM", "ORM", "Tool", "Q"}
    checked = page.evaluate(  # the explore tab's control comes first (the compare tab has its own)
        """() => [...document.querySelectorAll('button[aria-checked="true"]')].map(b => b.innerText.trim())"""
    )
    assert [name for name in checked if name in colours][0] == "Q", checked
    assert node_heading(page) == "Node 3"
    assert_no_errors(page)
    screenshot(page, "trees-from-a-link")


def test_model_text_renders_as_text(seeded_server: AppServer, page) -> None:
    page.goto(f"{seeded_server.url}/trees")
    wait_idle(page)
    assert_no_errors(page)
    # The seeded stale run holds <script>/Markdown options; none may become live HTML.
    assert page.evaluate("() => window.__pwned === undefined")
    assert page.locator("script:text('pwned')").count() == 0


def test_critics_and_compare_views(seeded_server: AppServer, page) -> None:
    page.goto(f"{seeded_server.url}/critics")
    wait_idle(page)
    page.get_by_role("tab", name="Calibration against outcomes or people").click()
    wait_idle(page)
    assert_no_errors(page)
    screenshot(page, "critics-calibration")
    page.goto(f"{seeded_server.url}/trees")
    wait_idle(page)
    page.get_by_role("tab", name="Compare two trees side by side").click()
    wait_idle(page)
    assert_no_errors(page)
    screenshot(page, "trees-compare")


@pytest.fixture(scope="module")
def rounds_server(
    tmp_path_factory: pytest.TempPathFactory, browser: object
) -> Iterator[tuple[AppServer, RoundsSeed]]:
    """The app over an improve loop's rounds (``seed_rounds``); ``browser`` first,
    so a machine without Chromium skips before starting a server."""
    folder = tmp_path_factory.mktemp("e2e-rounds")
    seed = seed_rounds(folder / "rounds.db")
    server = AppServer(seed.url, folder / "app.log")
    try:
        server.wait_healthy()
        yield server, seed
    finally:
        server.stop()


def test_rounds_side_by_side_a_click_opens_the_node_and_back_returns(rounds_server, page) -> None:
    """A link opens one problem across the rounds; clicking a node of round 1's
    tree opens it on the Trees page, and Back returns to the same rounds view."""
    server, seed = rounds_server
    link = f"{server.url}/rounds?chain={seed.chain[0]}&problem={seed.problems[0]}&color=prm"
    page.goto(link)
    wait_idle(page)
    for title in ("Base model", "Round 1", "Round 2"):
        page.locator("h4").filter(has_text=re.compile(f"^{title}$")).first.wait_for(timeout=30000)
    assert_no_errors(page)
    screenshot(page, "rounds-side-by-side")
    tree_id = seed.mcts[(1, 0)]
    selector = f'[class*="st-key-rounds-chart-{tree_id}"] .scatterlayer path.point'
    page.wait_for_function(
        f"() => [...document.querySelectorAll('{selector}')].some(p => p.getBoundingClientRect().width > 0)",
        timeout=30000,
    )
    points = page.locator(selector)
    boxes = [(box["y"], i) for i in range(points.count()) if (box := points.nth(i).bounding_box())]
    target = points.nth(max(boxes)[1])  # the deepest marker: a node that is not the root
    target.scroll_into_view_if_needed()
    box = target.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    # st.switch_page changes the URL within the page (no load event to wait for).
    page.wait_for_function(
        f"() => location.pathname.endsWith('/trees') && location.search.includes('tree={tree_id}')",
        timeout=30000,
    )
    wait_idle(page)
    heading = page.locator("h4").filter(has_text=re.compile(r"^Node \d+")).first.inner_text()
    assert heading != "Node 0", heading
    assert_no_errors(page)
    # The switch to Trees leaves a history entry of the bare Trees page too, so
    # Back may first land there (which shows the same node); at most twice.
    for _ in range(2):
        page.go_back()
        page.wait_for_timeout(1500)
        if "/rounds" in page.url:
            break
    wait_idle(page)
    page.locator("h4").filter(has_text=re.compile("^Round 2$")).first.wait_for(timeout=30000)
    assert f"problem={seed.problems[0]}" in page.url and "color=prm" in page.url, page.url
    checked = page.evaluate(
        """() => [...document.querySelectorAll('button[aria-checked="true"]')].map(b => b.innerText.trim())"""
    )
    assert "PRM" in checked, checked
    assert_no_errors(page)


@pytest.mark.slow
def test_live_search_on_smollm2_grows(tmp_path, page) -> None:
    """Start a 6-simulation search on smollm2-135m from the Search page and watch
    the node count grow (slow: loads a real model on the CPU)."""
    server = AppServer(f"sqlite:///{tmp_path / 'live.db'}", tmp_path / "app.log")
    try:
        server.wait_healthy()
        page.goto(f"{server.url}/search")
        wait_idle(page)
        page.get_by_text("Policy model").first.wait_for()
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Policy model").click()
        page.get_by_role("option", name="smollm2-135m").click()
        wait_idle(page)
        simulations = page.get_by_role("spinbutton", name="Simulations", exact=True)
        simulations.fill("6")
        simulations.press("Enter")
        wait_idle(page)
        page.get_by_role("button", name="Start search").click()
        page.get_by_text(re.compile("Loading the model|Nodes in tree")).first.wait_for(timeout=60000)
        screenshot(page, "search-live-starting")
        counts: list[int] = []
        deadline = time.monotonic() + 540
        while time.monotonic() < deadline:
            metric = page.locator('[data-testid="stMetric"]').filter(has_text="Nodes in tree")
            if metric.count():
                value = metric.locator('[data-testid="stMetricValue"]').inner_text()
                counts.append(int(value))
                if len(set(counts)) >= 2 and counts[-1] > counts[0]:
                    break
            page.wait_for_timeout(1000)
        assert_no_errors(page)
        screenshot(page, "search-live-growing")
        assert counts and counts[-1] > counts[0], f"node counts seen: {sorted(set(counts))}"
        stop = page.get_by_role("button", name="Stop search")
        if stop.count():
            stop.click()
            page.get_by_text(re.compile("interrupted|completed|Your last search")).first.wait_for(
                timeout=60000
            )
    finally:
        server.stop()
