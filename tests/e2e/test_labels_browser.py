"""Labelling with the keyboard in headless Chromium: a node on the Trees page,
the Critics page's disagreement queue, labels kept across a studio restart and
listed on the Labels page. Its own server and store, since labels change it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from store.db import make_engine
from store.labels import label_records
from tests.app_fixtures import SeedInfo, seed_database
from tests.e2e.conftest import AppServer, _skip_reason, assert_no_errors, screenshot, wait_idle

pytestmark = [pytest.mark.browser]


@pytest.fixture
def store(tmp_path: Path) -> SeedInfo:
    if reason := _skip_reason():
        pytest.skip(reason)
    return seed_database(tmp_path / "labels.db")


@pytest.fixture
def server(store: SeedInfo, tmp_path: Path, monkeypatch) -> Iterator[AppServer]:
    monkeypatch.setenv("CANOPY_USER", "ada")
    app = AppServer(store.url, tmp_path / "app.log")
    try:
        app.wait_healthy()
        yield app
    finally:
        app.stop()


def _labels(store: SeedInfo) -> list[tuple[int, int, str, str]]:
    records = label_records(make_engine(store.url, create=False))
    return sorted((r["tree_id"], r["node_index"], r["author"], r["verdict"]) for r in records)


def _press(page, key: str, expect: str) -> None:
    page.locator("h1").first.click()  # focus the app (shortcuts listen there), not a text box
    page.keyboard.press(key)
    page.get_by_text(re.compile(expect)).first.wait_for(timeout=30000)
    wait_idle(page)


def test_a_node_is_labelled_with_a_key_and_the_label_survives_a_restart(
    store: SeedInfo, server: AppServer, page, tmp_path: Path
) -> None:
    tree = store.tree_ids["a1"]
    page.goto(f"{server.url}/trees?tree={tree}&node=3")
    wait_idle(page)
    _press(page, "2", rf"Saved: node 3 of tree {tree} is incorrect")
    assert _labels(store) == [(tree, 3, "ada", "incorrect")]
    assert page.get_by_text("labelled incorrect").count() > 0  # the mark's legend entry on the tree
    assert_no_errors(page)
    screenshot(page, "labels-trees-node-labelled")

    server.stop()  # the studio restarts; the label is in the store, not in the session
    again = AppServer(store.url, tmp_path / "again.log")
    try:
        again.wait_healthy()
        page.goto(f"{again.url}/trees?tree={tree}&node=3")
        wait_idle(page)
        page.get_by_text(re.compile(r"Your label: incorrect")).first.wait_for(timeout=30000)
        page.goto(f"{again.url}/labels")
        wait_idle(page)
        page.get_by_text(
            re.compile(r"^1 label on 1 step by 1 person: 0 correct, 1 incorrect")
        ).first.wait_for(timeout=30000)
        assert_no_errors(page)
        screenshot(page, "labels-page")
    finally:
        again.stop()


def test_the_critics_queue_is_labelled_with_the_keyboard(store: SeedInfo, server: AppServer, page) -> None:
    page.goto(f"{server.url}/critics")
    wait_idle(page)
    page.get_by_text(re.compile(r"^Node 1 of \d+")).first.wait_for(timeout=30000)
    _press(page, "j", r"^Node 2 of \d+")
    _press(page, "k", r"^Node 1 of \d+")
    caption = page.get_by_text(re.compile(r"^Node 1 of \d+")).first.inner_text()
    tree, node = (int(n) for n in re.findall(r"tree (\d+), node (\d+)", caption)[0])
    _press(page, "1", r"^Node 2 of \d+")  # a label moves on
    assert _labels(store) == [(tree, node, "ada", "correct")]
    _press(page, "3", r"^Node 3 of \d+")
    assert [verdict for *_, verdict in _labels(store)].count("unsure") == 1
    assert_no_errors(page)
    screenshot(page, "labels-critics-queue")
