"""The node detail's token view in headless Chromium: an option of markup,
Markdown and a script shows as typed, token by token, with a tooltip each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import AppServer, _skip_reason, assert_no_errors, screenshot, wait_idle
from tests.test_app_tokens import HOSTILE, TokenStore, token_store

pytestmark = [pytest.mark.browser]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[AppServer, TokenStore]]:
    if reason := _skip_reason():
        pytest.skip(reason)
    store = token_store(tmp_path)
    app = AppServer(store.url, tmp_path / "app.log")
    try:
        app.wait_healthy()
        yield app, store
    finally:
        app.stop()


def test_a_hostile_option_shows_as_typed_token_by_token(server, page) -> None:
    app, store = server
    page.goto(f"{app.url}/trees?tree={store.tree_id}&node={store.hostile}")
    wait_idle(page)
    tokens = page.locator("span[title*='p = ']")
    tokens.first.wait_for(timeout=30000)
    assert "".join(tokens.all_inner_texts()) == HOSTILE.replace("\n", "↵\n")
    assert page.evaluate("() => window.__pwned === undefined"), "the option's script never ran"
    assert (
        page.locator("b", has_text="b").count() == 0 and page.locator("strong", has_text="bold").count() == 0
    )
    assert "· token 1 · p = " in tokens.first.get_attribute("title")
    tokens.first.scroll_into_view_if_needed()
    assert_no_errors(page)
    screenshot(page, "trees-token-view")
