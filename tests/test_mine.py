"""Mining trees into training examples: each kind's selection on hand-built trees
whose answers are known, idempotent re-runs, and a tree grown by the real search."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import Session, select

from engine.api import search_problem
from engine.config import ConfigError, SearchConfig
from engine.types import Problem
from store import schema
from store.db import StoreError, make_engine
from tests.fakes import fake_components
from training.mine import KINDS, MineConfig, load_examples, mine_trees, trees_of_run

QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"
STEP_RIGHT = "Tom has 3 + 4 = 7 apples.\n"
STEP_WRONG = "Tom has 3 + 5 = 8 apples.\n"
STEP_UNSEEN = "Let me think.\n"
END_7 = "The answer is 7.\n"
END_8 = "The answer is 8.\n"


def _rollout(text: str, answer: str | None, orm: float | None) -> dict[str, Any]:
    return {"text": text, "tokens": len(text.split()), "answer": answer, "orm": orm, "tool": None}


# index, parent, option text, visits, q, combined, orm, terminal answer, rollouts
APPLES = [
    (0, -1, "", 10, 0.6, None, None, None, []),
    (1, 0, STEP_RIGHT, 6, 0.9, 0.8, None, None, []),
    (
        2,
        0,
        STEP_WRONG,
        3,
        0.3,
        0.4,
        None,
        None,
        [
            _rollout("So the answer is 8.", "8", 0.2),
            _rollout("No, 3 + 4 = 7. The answer is 7.", "7", 0.6),
            _rollout("I am not sure.", None, None),
        ],
    ),
    (3, 1, END_7, 4, 1.0, 0.7, 0.9, "7", []),
    (4, 1, END_8, 2, 0.75, 0.95, 0.3, "8", []),
    (5, 0, STEP_UNSEEN, 0, 0.0, 0.5, None, None, []),
]
"""A tree over QUESTION (gold 7) whose labels are worked out by hand in the tests."""


@pytest.fixture
def engine(db_url):
    """A fresh store, on SQLite and on PostgreSQL (``tests/conftest.py``)."""
    return make_engine(db_url)


def add_tree(
    engine,
    nodes=APPLES,
    *,
    gold: str | None = "7",
    question: str = QUESTION,
    run_id: int | None = None,
    status: str = "completed",
) -> int:
    """Store a tree from ``(index, parent, text, visits, q, combined, orm, answer, rollouts)`` rows;
    a node with an answer is terminal."""
    with Session(engine) as session:
        if run_id is None:
            run = schema.Run(model="fake", task="custom", status="completed")
            session.add(run)
            session.flush()
            run_id = run.id
        problem = schema.Problem(task="custom", question=question, answer=gold)
        session.add(problem)
        session.flush()
        tree = schema.Tree(run_id=run_id, problem_id=problem.id, status=status, node_count=len(nodes))
        session.add(tree)
        session.flush()
        depth = {-1: -1}
        for index, parent, text, visits, q, combined, orm, answer, rollouts in nodes:
            depth[index] = depth[parent] + 1
            session.add(
                schema.Node(
                    tree_id=tree.id,
                    index=index,
                    parent_index=parent,
                    depth=depth[index],
                    option_text=text,
                    visits=visits,
                    value_sum=q * visits,
                    q=q,
                    combined_score=combined,
                    orm_score=orm,
                    terminal=answer is not None,
                    answer=answer,
                    rollouts=rollouts,
                )
            )
        session.commit()
        return tree.id


def add_iteration(engine) -> int:
    with Session(engine) as session:
        iteration = schema.Iteration(name="it")
        session.add(iteration)
        session.commit()
        return iteration.id


def stored(engine, kind: str | None = None) -> list[schema.TrainingExample]:
    query = select(schema.TrainingExample).order_by(schema.TrainingExample.id)
    if kind is not None:
        query = query.where(schema.TrainingExample.kind == kind)
    with Session(engine) as session:
        return list(session.exec(query).all())


def mine(engine, tree_ids, **settings) -> dict[str, int]:
    return mine_trees(engine, tree_ids, MineConfig(**settings)).counts


# -- config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"sft_orm_threshold": 1.5}, "sft_orm_threshold"),
        ({"dpo_margin": 0.0}, "dpo_margin"),
        ({"dpo_min_visits": 0}, "dpo_min_visits"),
        ({"prm_threshold": -0.1}, "prm_threshold"),
        ({"max_sft_per_problem": 0}, "max_sft_per_problem"),
        ({"kinds": ("sft", "ppo")}, "kinds"),
        ({"kinds": ()}, "kinds"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(settings, named) -> None:
    with pytest.raises(ConfigError, match=named):
        MineConfig(**settings)


def test_config_takes_kinds_as_list_and_every_field_has_help() -> None:
    from dataclasses import fields

    assert MineConfig(kinds=["dpo", "sft"]).kinds == ("dpo", "sft")
    assert MineConfig(kinds="orm").kinds == ("orm",)
    assert all(field.metadata["help"] for field in fields(MineConfig))


# -- sft ----------------------------------------------------------------------------


def test_sft_keeps_the_best_critic_score_that_passes_the_orm(engine) -> None:
    tree_id = add_tree(engine)
    counts = mine(engine, [tree_id], kinds=("sft",))
    assert counts == {"sft": 1}
    # Node 4 has the best critic score (0.95) but its ORM (0.3) fails 0.5.
    [row] = stored(engine, "sft")
    assert row.payload == {
        "question": QUESTION,
        "steps": [STEP_RIGHT, END_7],
        "answer": "7",
        "score": 0.7,
        "source": "critic",
    }
    assert row.source_nodes == [0, 1, 3] and row.source_tree_id == tree_id and row.iteration_id is None


def test_sft_orm_threshold_is_inclusive(engine) -> None:
    tree_id = add_tree(engine)
    mine(engine, [tree_id], kinds=("sft",), sft_orm_threshold=0.3)
    [payload] = load_examples(engine, kind="sft")
    assert payload["steps"] == [STEP_RIGHT, END_8] and payload["score"] == 0.95
    assert mine(engine, [tree_id], kinds=("sft",), sft_orm_threshold=0.95) == {"sft": 0}


def test_sft_candidates_include_rollouts(engine) -> None:
    tree_id = add_tree(engine)
    # Only the rollout "...answer is 7." (ORM 0.6) and node 3 (ORM 0.9) pass 0.55; keep both.
    mine(engine, [tree_id], kinds=("sft",), sft_orm_threshold=0.55, max_sft_per_problem=5)
    rows = stored(engine, "sft")
    assert [row.source_nodes for row in rows] == [[0, 1, 3], [0, 2]]
    assert rows[1].payload["steps"] == [STEP_WRONG, "No, 3 + 4 = 7. The answer is 7."]
    assert rows[1].payload["answer"] == "7" and rows[1].payload["score"] == 0.6


def test_sft_with_gold_keeps_verified_trajectories_best_first(engine) -> None:
    tree_id = add_tree(engine)
    mine(engine, [tree_id], kinds=("sft",), use_gold=True, max_sft_per_problem=3)
    payloads = load_examples(engine, kind="sft")
    # Correct: node 3 (critic 0.7) and the rollout answering 7 (0.6); node 4 scores higher but is wrong.
    assert [p["answer"] for p in payloads] == ["7", "7"]
    assert [p["score"] for p in payloads] == [0.7, 0.6]
    assert {p["source"] for p in payloads} == {"gold"}


def test_sft_with_gold_allowed_but_absent_falls_back_to_the_critic(engine) -> None:
    tree_id = add_tree(engine, gold=None)
    mine(engine, [tree_id], kinds=("sft",), use_gold=True)
    [payload] = load_examples(engine, kind="sft")
    assert payload["source"] == "critic" and payload["steps"] == [STEP_RIGHT, END_7]


def test_sft_needs_an_orm_score_without_gold(engine) -> None:
    no_orm = [row[:6] + (None,) + row[7:8] + ([],) for row in APPLES]
    tree_id = add_tree(engine, no_orm)
    assert mine(engine, [tree_id], kinds=("sft",), sft_orm_threshold=0.0) == {"sft": 0}


def test_sft_cap_is_per_problem_across_trees(engine) -> None:
    with Session(engine) as session:
        run = schema.Run(model="fake", task="custom")
        session.add(run)
        session.commit()
        run_id = run.id
    first = add_tree(engine, run_id=run_id)
    second = add_tree(engine, run_id=run_id)
    with Session(engine) as session:  # the two searches share one problem row, as find_or_add_problem makes
        trees = [session.get(schema.Tree, first), session.get(schema.Tree, second)]
        trees[1].problem_id = trees[0].problem_id
        session.add(trees[1])
        session.commit()
    assert mine(engine, [first, second], kinds=("sft",))["sft"] == 1
    assert stored(engine, "sft")[0].source_tree_id == first


# -- dpo ----------------------------------------------------------------------------


def test_dpo_pairs_visited_siblings_with_a_q_gap(engine) -> None:
    tree_id = add_tree(engine)
    assert mine(engine, [tree_id], kinds=("dpo",)) == {"dpo": 2}
    rows = stored(engine, "dpo")
    assert [row.source_nodes for row in rows] == [[1, 2], [3, 4]]
    assert rows[0].payload == {
        "question": QUESTION,
        "prefix": [],
        "chosen": STEP_RIGHT,
        "rejected": STEP_WRONG,
        "chosen_q": 0.9,
        "rejected_q": 0.3,
    }
    assert rows[1].payload["prefix"] == [STEP_RIGHT]
    assert (rows[1].payload["chosen"], rows[1].payload["rejected"]) == (END_7, END_8)


def test_dpo_margin_and_visits(engine) -> None:
    tree_id = add_tree(engine)
    # The 1.0 vs 0.75 gap is exactly 0.25: kept at margin 0.25, dropped above it.
    assert mine(engine, [tree_id], kinds=("dpo",), dpo_margin=0.25) == {"dpo": 2}
    assert mine(engine, [tree_id], kinds=("dpo",), dpo_margin=0.3) == {"dpo": 1}
    # Node 4 has 2 visits; node 5 (unvisited) never pairs.
    assert mine(engine, [tree_id], kinds=("dpo",), dpo_min_visits=3) == {"dpo": 1}
    assert stored(engine, "dpo")[0].source_nodes == [1, 2]


def test_dpo_pairs_the_best_sibling_with_each_worse_one_only(engine) -> None:
    three = [
        (0, -1, "", 9, 0.7, None, None, None, []),
        (1, 0, "a\n", 3, 0.9, 0.5, None, None, []),
        (2, 0, "b\n", 3, 0.7, 0.5, None, None, []),
        (3, 0, "c\n", 3, 0.5, 0.5, None, None, []),
    ]
    tree_id = add_tree(engine, three)
    assert mine(engine, [tree_id], kinds=("dpo",), dpo_margin=0.2) == {"dpo": 2}
    assert [row.source_nodes for row in stored(engine, "dpo")] == [[1, 2], [1, 3]]


# -- value and prm ------------------------------------------------------------------


def _by_nodes(engine, kind: str) -> dict[tuple[int, ...], dict[str, Any]]:
    return {tuple(row.source_nodes): row.payload for row in stored(engine, kind)}


def test_value_with_gold_is_the_verified_fraction_of_outcomes(engine) -> None:
    tree_id = add_tree(engine)
    assert mine(engine, [tree_id], kinds=("value",), use_gold=True) == {"value": 5}
    value = _by_nodes(engine, "value")
    # Outcomes: node 3 right, node 4 wrong, node 2's rollouts wrong, right, no answer.
    assert value[(0,)] == {"question": QUESTION, "steps": [], "target": 0.4, "source": "verified", "count": 5}
    assert (value[(0, 1)]["target"], value[(0, 1)]["count"]) == (0.5, 2)
    assert value[(0, 2)]["target"] == pytest.approx(1 / 3) and value[(0, 2)]["count"] == 3
    assert (value[(0, 1, 3)]["target"], value[(0, 1, 4)]["target"]) == (1.0, 0.0)
    assert value[(0, 1, 3)]["steps"] == [STEP_RIGHT, END_7]
    assert (0, 5) not in value  # unvisited, no outcomes


def test_value_without_gold_uses_rollout_orm_then_q(engine) -> None:
    tree_id = add_tree(engine)
    mine(engine, [tree_id], kinds=("value",))
    value = _by_nodes(engine, "value")
    assert value[(0,)]["source"] == "rollouts" and value[(0,)]["target"] == pytest.approx(0.4)
    assert value[(0,)]["count"] == 2  # the rollout without an ORM score is not an outcome here
    assert value[(0, 2)]["target"] == pytest.approx(0.4)
    assert value[(0, 1)] == {
        "question": QUESTION,
        "steps": [STEP_RIGHT],
        "target": pytest.approx(0.9),
        "source": "q",
        "count": 6,
    }
    assert (value[(0, 1, 3)]["target"], value[(0, 1, 4)]["target"]) == (1.0, 0.75)
    assert set(value) == {(0,), (0, 1), (0, 2), (0, 1, 3), (0, 1, 4)}


def test_prm_labels_each_step_by_threshold(engine) -> None:
    tree_id = add_tree(engine)
    assert mine(engine, [tree_id], kinds=("prm",), use_gold=True) == {"prm": 4}
    prm = _by_nodes(engine, "prm")
    assert (0,) not in prm  # the root is no step
    assert {nodes: p["label"] for nodes, p in prm.items()} == {
        (0, 1): True,  # estimate 0.5 == threshold
        (0, 2): False,
        (0, 1, 3): True,
        (0, 1, 4): False,
    }
    assert prm[(0, 1)] == {"question": QUESTION, "steps": [STEP_RIGHT], "label": True, "estimate": 0.5}
    mine(engine, [tree_id], kinds=("prm",), use_gold=True, prm_threshold=0.6)
    assert _by_nodes(engine, "prm")[(0, 1)]["label"] is False


# -- people's labels ---------------------------------------------------------------


def test_human_labels_take_precedence_over_mined_value_and_prm_labels(engine) -> None:
    from store.labels import put_label

    tree_id = add_tree(engine)
    put_label(engine, tree_id=tree_id, node_index=2, verdict="correct", author="ada")  # mined: wrong
    put_label(engine, tree_id=tree_id, node_index=2, verdict="correct", author="bob")
    put_label(engine, tree_id=tree_id, node_index=1, verdict="incorrect", author="ada")  # mined: right
    put_label(engine, tree_id=tree_id, node_index=3, verdict="unsure", author="ada")  # no verdict
    put_label(engine, tree_id=tree_id, node_index=5, verdict="incorrect", author="ada")  # unvisited
    result = mine_trees(engine, [tree_id], MineConfig(kinds=("value", "prm"), use_gold=True))
    assert result.human_labels == 3
    value, prm = _by_nodes(engine, "value"), _by_nodes(engine, "prm")
    assert value[(0, 2)] == {
        "question": QUESTION,
        "steps": [STEP_WRONG],
        "target": 1.0,
        "source": "human",
        "count": 2,
    }
    assert prm[(0, 2)] == {
        "question": QUESTION,
        "steps": [STEP_WRONG],
        "label": True,
        "estimate": 1.0,
        "source": "human",
    }
    assert (value[(0, 1)]["target"], value[(0, 1)]["source"], prm[(0, 1)]["label"]) == (0.0, "human", False)
    assert value[(0, 5)]["source"] == "human" and prm[(0, 5)]["label"] is False  # a label gives an example
    assert value[(0, 1, 3)]["source"] == "verified"  # "unsure" leaves the mined label
    assert result.counts == {"value": 6, "prm": 5}
    without = mine_trees(
        engine, [tree_id], MineConfig(kinds=("value", "prm"), use_gold=True, use_labels=False)
    )
    assert without.human_labels == 0 and _by_nodes(engine, "value")[(0, 2)]["source"] == "verified"


def test_labelled_nodes_of_other_trees_join_once_per_iteration(engine) -> None:
    from store.labels import put_label

    mined, labelled = add_tree(engine), add_tree(engine)
    put_label(engine, tree_id=labelled, node_index=4, verdict="correct", author="ada")
    iteration = add_iteration(engine)
    for _ in range(2):  # a re-run after a crash replaces, not duplicates
        result = mine_trees(engine, [mined], MineConfig(kinds=("value", "prm")), iteration_id=iteration)
    assert result.human_labels == 1
    from_labels = [row for row in stored(engine) if row.source_tree_id == labelled]
    assert sorted(row.kind for row in from_labels) == ["prm", "value"]
    assert all(row.payload["steps"] == [STEP_RIGHT, END_8] for row in from_labels)
    assert all(row.source_nodes == [0, 1, 4] for row in from_labels)
    # The labelled tree's own mining in the same iteration survives a later call that
    # re-adds its labelled node: only the label-made row is replaced, by an equal one.
    mine_trees(engine, [labelled], MineConfig(kinds=("value",)), iteration_id=iteration)
    mine_trees(engine, [mined], MineConfig(kinds=("value", "prm")), iteration_id=iteration)
    own = {
        tuple(r.source_nodes): r.payload["source"]
        for r in stored(engine, "value")
        if r.source_tree_id == labelled
    }
    assert own == {(0,): "rollouts", (0, 1): "q", (0, 2): "rollouts", (0, 1, 3): "q", (0, 1, 4): "human"}


# -- orm ----------------------------------------------------------------------------


def test_orm_labels_answers_against_gold(engine) -> None:
    tree_id = add_tree(engine)
    assert mine(engine, [tree_id], kinds=("orm",), use_gold=True) == {"orm": 4}
    labels = [
        (row.source_nodes, row.payload["steps"][-1], row.payload["label"]) for row in stored(engine, "orm")
    ]
    assert labels == [
        ([0, 2], "So the answer is 8.", False),
        ([0, 2], "No, 3 + 4 = 7. The answer is 7.", True),
        ([0, 1, 3], END_7, True),
        ([0, 1, 4], END_8, False),
    ]
    assert set(stored(engine, "orm")[0].payload) == {"question", "steps", "label"}


def test_orm_needs_gold_and_permission(engine) -> None:
    with_gold = add_tree(engine)
    without_gold = add_tree(engine, gold=None)
    assert mine(engine, [with_gold], kinds=("orm",)) == {"orm": 0}
    assert mine(engine, [without_gold], kinds=("orm",), use_gold=True) == {"orm": 0}


# -- storage ------------------------------------------------------------------------


def test_counts_cover_every_kind_and_match_the_rows(engine) -> None:
    tree_id = add_tree(engine)
    counts = mine(engine, [tree_id])
    assert counts == {"sft": 1, "dpo": 2, "value": 5, "prm": 4, "orm": 0}
    assert {kind: len(stored(engine, kind)) for kind in KINDS} == counts


def test_mining_twice_replaces_instead_of_duplicating(engine) -> None:
    tree_id = add_tree(engine)
    other = add_tree(engine)
    iteration = add_iteration(engine)
    first = mine_trees(engine, [tree_id], MineConfig(use_gold=True), iteration_id=iteration).counts
    again = mine_trees(engine, [tree_id], MineConfig(use_gold=True), iteration_id=iteration).counts
    assert first == again and len(stored(engine)) == sum(first.values())
    # Other iterations, other trees and other kinds are left alone.
    mine_trees(engine, [tree_id], MineConfig(use_gold=True))
    mine_trees(engine, [other], MineConfig(use_gold=True), iteration_id=iteration)
    mine_trees(engine, [tree_id], MineConfig(kinds=("dpo",)), iteration_id=iteration)
    assert len(stored(engine)) == 3 * sum(first.values())
    assert len(load_examples(engine, kind="sft", iteration_id=iteration)) == 2
    assert len(load_examples(engine, kind="sft")) == 3


def test_unknown_tree_or_iteration_writes_nothing(engine) -> None:
    tree_id = add_tree(engine)
    with pytest.raises(StoreError, match="no tree 99"):
        mine(engine, [tree_id, 99])
    with pytest.raises(StoreError, match="no iteration 7"):
        mine_trees(engine, [tree_id], MineConfig(), iteration_id=7)
    assert stored(engine) == []


def test_load_examples_rejects_unknown_kinds(engine) -> None:
    with pytest.raises(ConfigError, match="kind"):
        load_examples(engine, kind="ppo")


def test_trees_of_run_lists_completed_trees(engine) -> None:
    done = add_tree(engine)
    with Session(engine) as session:
        run_id = session.get(schema.Tree, done).run_id
    add_tree(engine, run_id=run_id, status="interrupted")
    later = add_tree(engine, run_id=run_id)
    add_tree(engine)  # another run
    assert trees_of_run(engine, run_id) == [done, later]
    with pytest.raises(StoreError, match="no run 42"):
        trees_of_run(engine, 42)


def test_mining_a_searched_tree_gives_consistent_paths(engine) -> None:
    config = SearchConfig(simulations=12, seed=3, similarity="edit", rollouts=1)
    components = fake_components(config=config)  # the fake PRM and ORM, exact-match similarity
    problem = Problem(question="Tom has 3 apples and buys 4. How many?", answer="7", task="custom")
    result = search_problem(engine, problem, model="fake", config=config, components=components)
    counts = mine(engine, trees_of_run(engine, result.run_id), use_gold=True, max_sft_per_problem=3)
    assert counts["value"] >= 1 and counts["prm"] >= 1 and counts["orm"] >= 1
    with Session(engine) as session:
        nodes = session.exec(select(schema.Node).where(schema.Node.tree_id == result.tree_id)).all()
    by_index = {node.index: node for node in nodes}
    for row in stored(engine):
        path = row.source_nodes
        if row.kind == "dpo":
            chosen, rejected = (by_index[i] for i in path)
            assert chosen.parent_index == rejected.parent_index and chosen.q > rejected.q
            assert row.payload["chosen"] == chosen.option_text
            continue
        assert path[0] == 0 and all(
            by_index[b].parent_index == a for a, b in zip(path, path[1:], strict=False)
        )
        texts = [by_index[i].option_text for i in path[1:]]
        assert row.payload["steps"][: len(texts)] == texts
        assert len(row.payload["steps"]) - len(texts) in (0, 1)  # a rollout adds one final step
    for payload in load_examples(engine, kind="sft"):
        assert payload["answer"] == "7" and payload["source"] == "gold"
