"""People's step labels: stored, replaced, refused for what is not there, read
back with their context, kept while a search writes the same database, and
exported by ``canopy export --kind labels``."""

from __future__ import annotations

import json
import threading

import pytest
from sqlmodel import Session, select

from engine.api import search_problem
from store import schema
from store.db import StoreError, make_engine
from store.labels import (
    default_author,
    human_verdicts,
    label_records,
    majority,
    put_label,
    remove_label,
    tree_labels,
)
from tests.test_store import PROBLEM, _components, _config


@pytest.fixture
def engine(db_url):
    """A fresh store, on SQLite and on PostgreSQL (``tests/conftest.py``)."""
    return make_engine(db_url)


def _tree(engine) -> int:
    return search_problem(engine, PROBLEM, model="fake", config=_config(), components=_components()).tree_id


def test_a_label_is_stored_replaced_and_removed(engine) -> None:
    tree_id = _tree(engine)
    put_label(engine, tree_id=tree_id, node_index=1, verdict="incorrect", author="ada", note="3 + 4 is not 8")
    put_label(engine, tree_id=tree_id, node_index=1, verdict="correct", author="  ada ", note="misread")
    put_label(engine, tree_id=tree_id, node_index=1, verdict="unsure", author="bob")
    labels = tree_labels(engine, tree_id)
    assert [(label.author, label.verdict, label.note) for label in labels] == [
        ("ada", "correct", "misread"),  # ada's second label replaced her first
        ("bob", "unsure", ""),
    ]
    with Session(engine) as session:
        run_id = session.get(schema.Tree, tree_id).run_id
    assert {label.run_id for label in labels} == {run_id}
    assert labels[0].updated_at >= labels[0].created_at
    assert remove_label(engine, tree_id=tree_id, node_index=1, author=" bob ") is True
    assert remove_label(engine, tree_id=tree_id, node_index=1, author="bob") is False
    assert [label.author for label in tree_labels(engine, tree_id)] == ["ada"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tree_id": 999}, "tree 999 is not in the database"),
        ({"node_index": 999}, "has no node 999"),
        ({"verdict": "maybe"}, "one of correct, incorrect, unsure"),
        ({"author": "  "}, "needs an author"),
        ({"author": "x" * 81}, "at most 80 characters"),
        ({"note": "n" * 2001}, "at most 2000 characters"),
    ],
)
def test_a_label_on_what_is_not_there_or_malformed_is_refused(engine, change, message) -> None:
    tree_id = _tree(engine)
    arguments = {"tree_id": tree_id, "node_index": 1, "verdict": "correct", "author": "ada", **change}
    with pytest.raises(StoreError, match=message):
        put_label(engine, **arguments)
    assert tree_labels(engine, tree_id) == []


def test_a_label_on_a_node_of_a_deleted_run_is_refused(engine) -> None:
    tree_id = _tree(engine)
    with Session(engine) as session:  # another tool removed the run and its tree under the studio
        tree = session.get(schema.Tree, tree_id)
        for table in (schema.Node, schema.FilteredOption, schema.SearchEvent, schema.VerifierProgram):
            for row in session.exec(select(table).where(table.tree_id == tree_id)).all():
                session.delete(row)
        run = session.get(schema.Run, tree.run_id)
        session.delete(tree)
        session.flush()
        session.delete(run)
        session.commit()
    with pytest.raises(StoreError, match="is not in the database \\(deleted\\?\\); the label was not saved"):
        put_label(engine, tree_id=tree_id, node_index=1, verdict="correct", author="ada")


def test_the_human_verdict_is_the_majority_of_sure_labels() -> None:
    assert majority(["correct", "correct", "incorrect"]) is True
    assert majority(["incorrect", "unsure", "unsure"]) is False
    assert majority(["correct", "incorrect"]) is None  # a tie says nothing
    assert majority(["unsure"]) is None


def test_records_carry_the_problem_and_the_steps_and_filter(engine) -> None:
    tree_id = _tree(engine)
    with Session(engine) as session:
        nodes = {n.index: n for n in session.exec(select(schema.Node).where(schema.Node.tree_id == tree_id))}
    deep = max(nodes, key=lambda i: nodes[i].depth)
    expected_steps, current = [], deep
    while nodes[current].parent_index >= 0:
        expected_steps.insert(0, nodes[current].option_text)
        current = nodes[current].parent_index
    put_label(engine, tree_id=tree_id, node_index=deep, verdict="incorrect", author="ada")
    put_label(engine, tree_id=tree_id, node_index=1, verdict="correct", author="bob")
    records = label_records(engine)
    assert [record["author"] for record in records] == ["bob", "ada"]  # newest first
    ada = records[1]
    assert list(ada) == [
        "id", "run_id", "tree_id", "node_index", "verdict", "note", "author", "created_at", "updated_at",
        "task", "problem_index", "question", "gold", "steps",
    ]  # fmt: skip
    assert ada["steps"] == expected_steps and len(expected_steps) == nodes[deep].depth
    assert ada["question"] == PROBLEM.question and ada["gold"] == "7"
    assert [r["author"] for r in label_records(engine, verdicts=["incorrect"])] == ["ada"]
    assert [r["author"] for r in label_records(engine, authors=["bob"])] == ["bob"]
    assert label_records(engine, run_ids=[ada["run_id"] + 1]) == []
    with Session(engine) as session:
        assert human_verdicts(session) == {(tree_id, deep): (False, 1), (tree_id, 1): (True, 1)}


def test_labels_are_written_while_a_search_writes_the_same_database(tmp_path) -> None:
    """The studio labels a tree while another process's search appends to the
    same SQLite file: every label lands and the search completes."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = make_engine(url)
    tree_id = _tree(engine)
    failures: list[BaseException] = []

    def search() -> None:
        try:
            writer = make_engine(url)
            for _ in range(3):
                search_problem(writer, PROBLEM, model="fake", config=_config(30), components=_components())
        except BaseException as error:  # reported below
            failures.append(error)

    thread = threading.Thread(target=search)
    thread.start()
    for round_ in range(20):
        put_label(
            engine,
            tree_id=tree_id,
            node_index=1 + round_ % 3,
            verdict=("correct", "incorrect")[round_ % 2],
            author=f"person-{round_}",
        )
    thread.join()
    assert failures == []
    assert len(tree_labels(engine, tree_id)) == 20
    with Session(engine) as session:
        assert len(session.exec(select(schema.Tree)).all()) == 4


def test_default_author_prefers_canopy_user(monkeypatch) -> None:
    monkeypatch.setenv("CANOPY_USER", "  grace  ")
    assert default_author() == "grace"


def test_canopy_export_writes_labels(tmp_path, capsys) -> None:
    from canopy.cli import main

    path = tmp_path / "store.db"
    engine = make_engine(str(path))
    tree_id = _tree(engine)
    put_label(engine, tree_id=tree_id, node_index=1, verdict="incorrect", author="ada", note='<b>"no"</b>')
    out = tmp_path / "labels.jsonl"
    assert main(["export", "--kind", "labels", "--db", str(path), "--out", str(out)]) == 0
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert (record["tree_id"], record["node_index"], record["verdict"]) == (tree_id, 1, "incorrect")
    assert record["note"] == '<b>"no"</b>' and record["question"] == PROBLEM.question
    assert "1 label" in capsys.readouterr().out
    assert main(["export", "--kind", "labels", "--iteration", "1", "--db", str(path), "--out", str(out)]) == 2
    assert "--iteration" in capsys.readouterr().err
