"""Full-text search over stored options, rollouts and answers (``store.text_index``),
on SQLite (FTS5) and on PostgreSQL (tsvector), through the store as searches write it."""

from __future__ import annotations

import pytest
from sqlmodel import Session, select

from engine.api import search_problem
from engine.config import SearchConfig
from engine.types import Problem
from store import schema
from store.db import make_engine
from store.text_index import MARK, search_text
from tests.fakes import fake_components

ROLLOUT = [{"text": "so the zebra count is 12", "tokens": 7, "answer": "12", "orm": None, "tool": None}]


@pytest.fixture
def engine(db_url):
    return make_engine(db_url)


def _tree(engine, texts: list[str], *, answer: str | None = None) -> int:
    with Session(engine) as session:
        run = schema.Run(model="fake", task="custom")
        problem = schema.Problem(task="custom", question="q")
        session.add_all([run, problem])
        session.flush()
        tree = schema.Tree(run_id=run.id, problem_id=problem.id)
        session.add(tree)
        session.flush()
        for index, text in enumerate(texts):
            session.add(
                schema.Node(
                    tree_id=tree.id, index=index, parent_index=index - 1, option_text=text, answer=answer
                )
            )
        session.commit()
        return tree.id


def test_options_answers_and_rollouts_are_found_and_ranked(engine) -> None:
    plain = _tree(engine, ["Count the apples first.", "Then 3 + 4 = 7 apples.", "Unrelated words."])
    busy = _tree(engine, ["apples apples and more apples", "pears"], answer="42")
    hits = search_text(engine, "apples")
    assert {(h.tree_id, h.node_index) for h in hits} == {(plain, 0), (plain, 1), (busy, 0)}
    assert (hits[0].tree_id, hits[0].node_index) == (busy, 0), "the node that says it three times ranks first"
    assert f"{MARK[0]}apples{MARK[1]}" in hits[0].snippet.lower()
    assert [(h.tree_id, h.node_index) for h in search_text(engine, "APPLES 7")] == [(plain, 1)]
    assert {h.node_index for h in search_text(engine, "appl*")} == {0, 1}
    assert {(h.tree_id, h.node_index) for h in search_text(engine, "42")} == {(busy, 0), (busy, 1)}  # answers
    assert search_text(engine, "appl") == []  # whole words unless asked for a prefix
    for odd in ('"', "NEAR(", "a OR", "'; DROP TABLE node; --", "", "   ", "*"):
        search_text(engine, odd)  # never a syntax error
    assert len(search_text(engine, "apples", limit=1)) == 1


def test_the_index_follows_writes_but_not_visit_updates(engine) -> None:
    tree = _tree(engine, ["Start here.", "A step about walruses."])
    assert search_text(engine, "zebra") == []
    with Session(engine) as session:
        node = session.exec(
            select(schema.Node).where(schema.Node.tree_id == tree, schema.Node.index == 1)
        ).one()
        node.rollouts = ROLLOUT
        node.visits += 3
        session.add(node)
        session.commit()
    assert [(h.tree_id, h.node_index) for h in search_text(engine, "zebra")] == [(tree, 1)]
    assert [h.node_index for h in search_text(engine, "walruses")] == [1]  # one entry, not two
    with Session(engine) as session:
        node = session.exec(
            select(schema.Node).where(schema.Node.tree_id == tree, schema.Node.index == 1)
        ).one()
        node.option_text = "A step about seals."
        session.add(node)
        session.commit()
    assert search_text(engine, "walruses") == [] and len(search_text(engine, "seals")) == 1


def test_a_real_search_is_searchable_as_it_is_written(engine) -> None:
    result = search_problem(
        engine,
        Problem(task="custom", question="How many apples?", answer="7"),
        model="fake",
        config=SearchConfig(simulations=4, seed=1, similarity="edit", rollouts=1),
        components=fake_components(),
    )
    with Session(engine) as session:
        node = session.exec(
            select(schema.Node).where(schema.Node.tree_id == result.tree_id, schema.Node.index > 0)
        ).first()
    word = next(w for w in node.option_text.split() if w.isalpha())
    assert (result.tree_id, node.index) in {(h.tree_id, h.node_index) for h in search_text(engine, word)}


def test_the_bench_fills_a_store_and_times_every_query(tmp_path, capsys) -> None:
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "text_search_bench", Path(__file__).resolve().parents[1] / "bench" / "text_search.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "find.json"
    assert bench.main(["--trees", "30", "--nodes", "5", "--repeats", "1", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads(out.read_text())
    assert report["trees"] == 30 and report["nodes"] == 150 and set(report["query_ms"]) == set(bench.QUERIES)
    assert report["query_ms"]["apples"]["hits"] > 0 and report["query_ms"]["zebra"]["hits"] > 0
    assert report["median_ms"] > 0 and isinstance(report["meets_goal"], bool)
