"""Labelling in the studio under AppTest: the node detail's panel, the Critics
page's keyboard queue and its measure against people, the Labels page, and the
tree's marks. Each test seeds its own store, since labels change it."""

from __future__ import annotations

import sqlite3

import pytest
from sqlmodel import Session, select

from store.db import make_engine
from store.labels import put_label, tree_labels
from store.schema import Node
from tests.app_fixtures import SeedInfo, seed_database
from tests.test_app_pages import assert_clean, open_page, texts

HOSTILE_NOTE = "<script>alert(1)</script> **bold** [x](javascript:alert(1))"


@pytest.fixture
def seeded(tmp_path, monkeypatch) -> SeedInfo:
    info = seed_database(tmp_path / "labels.db")
    monkeypatch.setenv("CANOPY_DB", info.url)
    monkeypatch.setenv("CANOPY_USER", "ada")
    return info


def _button(app, label: str):
    return next(b for b in app.button if b.label == label)


def _labels(info: SeedInfo, tree_id: int) -> list[tuple[int, str, str, str]]:
    engine = make_engine(info.url, create=False)
    return [(x.node_index, x.author, x.verdict, x.note) for x in tree_labels(engine, tree_id)]


def test_a_node_is_labelled_relabelled_and_unlabelled_from_its_detail(seeded: SeedInfo) -> None:
    tree_id = seeded.tree_ids["a1"]
    app = open_page("views/trees.py", state={"focus": {"tree_id": tree_id, "node": 2}})
    assert_clean(app)
    assert app.sidebar.text_input(key="labels.author").value == "ada"  # from $CANOPY_USER
    assert "You have not labelled this step yet." in texts(app, "caption")
    assert _button(app, "Remove mine").disabled
    app.text_input(key=f"trees.label.{tree_id}.note.{tree_id}.2").input(HOSTILE_NOTE)
    _button(app, "✗ Incorrect").click()
    app.run()
    assert_clean(app)
    assert _labels(seeded, tree_id) == [(2, "ada", "incorrect", HOSTILE_NOTE)]
    assert any("node 2 of tree" in s and "incorrect" in s for s in texts(app, "success"))
    assert any(c.startswith("Your label: **incorrect**") for c in texts(app, "caption"))
    frame = next(d.value for d in app.dataframe if "author" in d.value.columns)
    assert list(frame["note"]) == [HOSTILE_NOTE]  # a person's text stays data
    rendered = texts(app, "markdown") + texts(app, "caption") + texts(app, "success")
    assert not any("<script>" in r for r in rendered)
    _button(app, "✓ Correct").click()  # a second label replaces the first
    app.run()
    assert _labels(seeded, tree_id) == [(2, "ada", "correct", HOSTILE_NOTE)]
    app.sidebar.text_input(key="labels.author").input("bob")
    app.run()
    _button(app, "? Unsure").click()
    app.run()
    assert [(a, v) for _, a, v, _ in _labels(seeded, tree_id)] == [("ada", "correct"), ("bob", "unsure")]
    _button(app, "Remove mine").click()
    app.run()
    assert [a for _, a, _, _ in _labels(seeded, tree_id)] == ["ada"]


def test_the_root_has_no_label_panel(seeded: SeedInfo) -> None:
    app = open_page("views/trees.py", state={"focus": {"tree_id": seeded.tree_ids["a1"], "node": 0}})
    assert_clean(app)
    assert not [b for b in app.button if b.label == "✓ Correct"]


def test_a_label_on_a_node_whose_run_was_deleted_is_refused_with_a_message(seeded: SeedInfo) -> None:
    tree_id = seeded.tree_ids["a1"]
    app = open_page("views/trees.py", state={"focus": {"tree_id": tree_id, "node": 2}})
    with sqlite3.connect(seeded.path) as raw:  # another tool deletes the run while the page is open
        raw.execute("DELETE FROM run WHERE id = (SELECT run_id FROM tree WHERE id = ?)", (tree_id,))
    _button(app, "✓ Correct").click()
    app.run()
    errors = texts(app, "error")
    assert any(e.startswith("Not saved: the run of tree") and "deleted?" in e for e in errors), errors
    assert _labels(seeded, tree_id) == []


def test_the_critics_queue_walks_the_disagreements_and_labels_with_one_press(seeded: SeedInfo) -> None:
    app = open_page("views/critics.py")
    assert_clean(app)
    assert _button(app, "← Previous").disabled
    first = next(c for c in texts(app, "caption") if c.startswith("Node 1 of "))
    _button(app, "Next →").click()
    app.run()
    assert any(c.startswith("Node 2 of ") for c in texts(app, "caption"))
    _button(app, "← Previous").click()
    app.run()
    assert first in texts(app, "caption")
    tree_id, node = (int(part.split()[-1]) for part in first.split(": ")[1].split(", ")[:2])
    _button(app, "✗ Incorrect").click()  # labels and moves on
    app.run()
    assert_clean(app)
    assert any(c.startswith("Node 2 of ") for c in texts(app, "caption"))
    assert (node, "ada", "incorrect", "") in _labels(seeded, tree_id)
    table = next(d.value for d in app.dataframe if "people" in d.value.columns)
    assert "incorrect" in set(table["people"].dropna())
    _button(app, "Open in Trees").click()
    app.run()
    assert app.title[0].value == "Trees"


def test_critics_are_measured_against_peoples_labels(seeded: SeedInfo) -> None:
    engine = make_engine(seeded.url, create=False)
    tree_id = seeded.tree_ids["a1"]
    with Session(engine) as session:
        indices = session.exec(
            select(Node.index).where(Node.tree_id == tree_id, Node.parent_index >= 0).order_by(Node.index)
        ).all()
    for i, index in enumerate(indices[:6]):
        put_label(
            engine, tree_id=tree_id, node_index=index, verdict=("correct", "incorrect")[i % 2], author="ada"
        )
    app = open_page("views/critics.py", state={"critics.truth": "human"})
    assert_clean(app)
    assert any(
        "nodes with a human verdict" in c and c.startswith("Each critic") for c in texts(app, "caption")
    )
    table = next(d.value for d in app.dataframe if "precision" in d.value.columns)
    assert table["nodes"].max() == 6  # the labelled nodes each critic scored
    app = open_page("views/critics.py", state={"critics.truth": "outcome"})
    table = next(d.value for d in app.dataframe if "precision" in d.value.columns)
    assert table["nodes"].max() > 6


def test_the_labels_page_filters_links_and_downloads(seeded: SeedInfo) -> None:
    app = open_page("views/labels.py")
    assert_clean(app)
    assert any("No labels yet" in i for i in texts(app, "info"))
    engine = make_engine(seeded.url, create=False)
    a1, b1 = seeded.tree_ids["a1"], seeded.tree_ids["b1"]
    put_label(engine, tree_id=a1, node_index=1, verdict="correct", author="ada", note=HOSTILE_NOTE)
    put_label(engine, tree_id=b1, node_index=2, verdict="incorrect", author="bob")
    app = open_page("views/labels.py")
    assert_clean(app)
    table = app.dataframe[0].value
    assert list(table["author"]) == ["bob", "ada"] and list(table["note"]) == ["", HOSTILE_NOTE]
    assert {"prm_score", "value_score", "step"} <= set(table.columns)  # the critics beside the person
    assert not any("<script>" in r for r in texts(app, "markdown") + texts(app, "caption"))
    app.multiselect(key="labels.verdicts").set_value(["incorrect"])
    app.run()
    assert list(app.dataframe[0].value["author"]) == ["bob"]
    assert app.query_params["verdict"] == "incorrect"
    app = open_page("views/labels.py", query={"author": "ada"})  # a link restores the filter
    assert list(app.dataframe[0].value["author"]) == ["ada"]
    assert {e.proto.label for e in app.get("download_button")} == {"Download these labels (JSONL)"}
