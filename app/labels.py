"""Labelling steps in the studio: who is labelling, the panel that records a
person's verdict on a node, and the marks labelled nodes get on the tree.

Labels live in the store (``store.labels``); the improve loop trains the PRM and
the value head on them ahead of mined labels. Notes are a person's text, shown
like model text: verbatim, never as Markdown.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd
import streamlit as st

from app import data
from store.db import StoreError
from store.labels import MAX_NOTE, default_author, majority, put_label, remove_label
from store.schema import LABEL_VERDICTS

AUTHOR = "labels.author"
"""Session key of the name labels are saved under (one per browser session)."""
MESSAGE = "labels.message"
"""Session key: the outcome of the last save, shown once on the next run."""
VERDICT_TEXT = {"correct": "✓ Correct", "incorrect": "✗ Incorrect", "unsure": "? Unsure"}
SHORTCUTS = {"correct": "1", "incorrect": "2", "unsure": "3"}


def author() -> str:
    name = " ".join(str(st.session_state.get(AUTHOR) or "").split())
    return name or default_author()


def author_input() -> None:
    """The "Labelling as" box; its value lasts for the browser session."""
    st.session_state.setdefault(AUTHOR, default_author())
    st.text_input(
        "Labelling as",
        key=AUTHOR,
        max_chars=80,
        help="Your labels are saved under this name; labelling a node again replaces your label. "
        "Set $CANOPY_USER to change the default.",
    )


def node_marks(labels: pd.DataFrame) -> dict[int, str]:
    """Node index -> what its labels add up to, as the tree marks it
    (``app.layout.LABEL_MARKS``): the human verdict, or "unsure" where the
    labels are all "unsure" or split evenly."""
    marks = {}
    for index, group in labels.groupby("node_index"):
        verdict = majority(group["verdict"])
        marks[int(index)] = "unsure" if verdict is None else ("correct" if verdict else "incorrect")
    return marks


def _show_message() -> None:
    if (message := st.session_state.pop(MESSAGE, None)) is not None:
        kind, text = message
        (st.success if kind == "ok" else st.error)(text, icon=":material/label:" if kind == "ok" else None)


def _save(
    url: str, tree_id: int, node: int, verdict: str, note_key: str, then: Callable[[], None] | None
) -> None:
    try:
        put_label(
            data.engine(url),
            tree_id=tree_id,
            node_index=node,
            verdict=verdict,
            author=author(),
            note=st.session_state.get(note_key, ""),
        )
    except StoreError as error:
        st.session_state[MESSAGE] = ("error", f"Not saved: {error}")
        return
    st.session_state[MESSAGE] = ("ok", f"Saved: node {node} of tree {tree_id} is {verdict}.")
    if then is not None:
        then()


def _remove(url: str, tree_id: int, node: int) -> None:
    removed = remove_label(data.engine(url), tree_id=tree_id, node_index=node, author=author())
    st.session_state[MESSAGE] = (
        "ok",
        f"Removed your label on node {node}." if removed else "Nothing to remove.",
    )


def label_panel(
    url: str,
    tree_id: int,
    node: int,
    *,
    key: str,
    shortcuts: bool = False,
    then: Callable[[], None] | None = None,
) -> None:
    """Record the current person's verdict on ``node`` of ``tree_id`` and show
    everyone's labels on it. ``shortcuts`` binds keys 1, 2, 3 to the verdicts
    (one panel per page may); ``then`` runs after a save (the queue moves on)."""
    with st.sidebar:
        author_input()
    labels = data.tree_labels(url, tree_id, data.labels_stamp(url))
    here = labels[labels["node_index"] == node]
    name = author()
    own = here[here["author"] == name]
    current = own.iloc[0] if len(own) else None
    st.markdown("##### Is this step right?")
    _show_message()
    note_key = f"{key}.note.{tree_id}.{node}"
    st.session_state.setdefault(note_key, "" if current is None else str(current["note"]))
    st.text_input(
        "Note (optional)",
        key=note_key,
        max_chars=MAX_NOTE,
        placeholder="Why? e.g. “3 × 4 is 12, not 14”",
    )
    # Two by two: the detail column is narrow, and four buttons in a row cut their labels.
    columns = [*st.columns(2), *st.columns(2)]
    for column, verdict in zip(columns, LABEL_VERDICTS, strict=False):
        column.button(
            VERDICT_TEXT[verdict],
            key=f"{key}.{verdict}",
            type="primary" if current is not None and current["verdict"] == verdict else "secondary",
            on_click=_save,
            args=(url, tree_id, node, verdict, note_key, then),
            shortcut=SHORTCUTS[verdict] if shortcuts else None,
            help=f"Label this step {verdict}" + (f" (key {SHORTCUTS[verdict]})" if shortcuts else ""),
            use_container_width=True,
        )
    columns[-1].button(
        "Remove mine",
        key=f"{key}.remove",
        disabled=current is None,
        on_click=_remove,
        args=(url, tree_id, node),
        use_container_width=True,
    )
    if current is None:  # names and notes are people's text: shown in the table, not as Markdown
        st.caption("You have not labelled this step yet.")
    else:
        st.caption(f"Your label: **{current['verdict']}**, saved {str(current['updated_at'])[:16]} UTC.")
    if len(here):
        st.dataframe(
            here[["author", "verdict", "note", "updated_at"]],
            hide_index=True,
            column_config={
                "note": st.column_config.TextColumn(width="large"),
                "updated_at": st.column_config.DatetimeColumn("when (UTC)", format="YYYY-MM-DD HH:mm"),
            },
        )
