"""Every view has a link: a page's selections live in its URL's query string.

A page names its parameters once (``Param``: the URL name, how to read and
write the value in ``st.session_state``). At the top of the page ``restore``
copies the URL into the session when the URL changed from outside (a pasted
link, the browser's back or forward button: Streamlit reruns with the older
query string); at the end ``publish`` writes the selections back, dropping
parameters of other pages. Streamlit pushes a browser-history entry whenever
the query string changes, so the back button walks back through selections.
Values that do not parse are ignored, never an error: a link is user input.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import streamlit as st

APPLIED = "links.applied"
"""Session key: per page, the query string last read or written."""


@dataclass(frozen=True)
class Param:
    """One URL parameter: ``name`` in the URL; ``get`` reads the session's value
    (None: not in the URL); ``set`` puts a URL value (text) into the session,
    raising ``ValueError`` for a value that does not parse; ``held`` says
    whether the session holds the value at all (an emptied multiselect does,
    a widget value Streamlit dropped with its page does not), None where it
    cannot tell (then a dropped value is not missed)."""

    name: str
    get: Callable[[], Any]
    set: Callable[[str], None]
    held: Callable[[], bool] | None = None


def key_param(name: str, key: str, kind: Callable[[str], Any] = str) -> Param:
    """A parameter held in widget ``key`` (before the widget is drawn)."""
    return Param(
        name,
        lambda: st.session_state.get(key),
        lambda text: st.session_state.__setitem__(key, kind(text)),
        lambda: key in st.session_state,
    )


def list_param(name: str, key: str, kind: Callable[[str], Any] = str) -> Param:
    """A multiselect's values, comma-separated in the URL."""

    def get() -> str | None:
        values = st.session_state.get(key) or []
        return ",".join(str(value) for value in values) or None

    def put(text: str) -> None:
        st.session_state[key] = [kind(part) for part in text.split(",") if part]

    return Param(name, get, put, lambda: key in st.session_state)


def restore(page: str, params: list[Param]) -> bool:
    """Copy the URL's values into the session if the URL changed since this
    page last read or wrote it, or if the session lost values the URL holds;
    whether it did. Streamlit drops a page's widget values while another page
    runs, and ``st.switch_page`` leaves history entries of bare URLs, so a page
    met again through Back or the sidebar with a bare URL gets its last link's
    values back (``publish`` then writes that link again)."""
    current = _query()
    applied = st.session_state.setdefault(APPLIED, {})
    source = current or applied.get(page) or {}
    lost = any(param.name in source and param.held is not None and not param.held() for param in params)
    if applied.get(page) == current and not lost:
        return False
    for param in params:
        if param.name in source:
            try:
                param.set(source[param.name])
            except (ValueError, TypeError):
                pass
    applied[page] = current
    return True


def publish(page: str, params: list[Param]) -> None:
    """Write the page's selections into the URL (and only them)."""
    wanted = {}
    for param in params:
        value = param.get()
        if value is not None and value != "":
            wanted[param.name] = str(value)
    if _query() != wanted:
        st.query_params.from_dict(wanted)
    st.session_state.setdefault(APPLIED, {})[page] = wanted


def _query() -> dict[str, str]:
    return {name: st.query_params[name] for name in st.query_params}
