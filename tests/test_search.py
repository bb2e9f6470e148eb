"""The search on fakes: selection, branching, filtering, backprop, answers, golden tree."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from engine.answer_selection import choose_answers
from engine.config import ConfigError, SearchConfig
from engine.critics import Critics, combine
from engine.search import run_search
from engine.selection import (
    branching_width,
    importance,
    priors_from_logprobs,
    puct_score,
    select_child,
    uct_score,
)
from engine.tree import Node, Tree
from engine.types import CriticScores, Option, Rollout
from tests.fakes import FakeORM, FakePolicy, FakePRM, exact_similarity

GOLDEN = Path(__file__).parent / "data" / "golden_tree.json"
QUESTION = "Tom has 3 apples and buys 4 more. How many apples does he have?"


def _search(simulations: int = 12, similarity=exact_similarity, **overrides) -> tuple[Tree, FakePolicy]:
    policy = FakePolicy()
    config = SearchConfig(simulations=simulations, seed=3, similarity="edit", **overrides)
    tree = run_search(
        question=QUESTION,
        policy=policy,
        critics=Critics(prm=FakePRM(), orm=FakeORM()),
        config=config,
        similarity=similarity,
    )
    return tree, policy


def _option(text: str, logprob_mean: float = -1.0) -> Option:
    return Option(text, (1,), logprob_mean, logprob_mean, False, "newline")


def _bandit_tree(stats: list[tuple[int, float, float]]) -> Tree:
    """A root with one child per (visits, value_sum, prior)."""
    tree = Tree.new("q", (0,))
    for visits, value_sum, prior in stats:
        child = tree.add_child(0, _option("x"), simulation=0)
        child.visits, child.value_sum, child.prior = visits, value_sum, prior
    tree.root.visits = sum(visits for visits, _, _ in stats)
    return tree


def test_puct_prefers_high_q_when_visits_equal() -> None:
    tree = _bandit_tree([(5, 1.0, 0.5), (5, 4.0, 0.5)])
    assert select_child(tree, tree.root, rule="puct", c=1.0).index == 2


def test_puct_explores_high_prior_rarely_visited_child() -> None:
    tree = _bandit_tree([(50, 30.0, 0.1), (1, 0.5, 0.9)])
    child = select_child(tree, tree.root, rule="puct", c=1.0)
    assert child.index == 2
    # With c = 0 exploitation wins.
    assert select_child(tree, tree.root, rule="puct", c=0.0).index == 1


def test_uct_visits_unvisited_children_first() -> None:
    tree = _bandit_tree([(3, 2.9, 0.9), (0, 0.0, 0.1)])
    assert math.isinf(uct_score(tree.nodes[2], 3, 1.0))
    assert select_child(tree, tree.root, rule="uct", c=1.0).index == 2


def test_selection_formulas() -> None:
    node = Node(1, 0, 1, prior=0.5, visits=3, value_sum=1.5)
    assert puct_score(node, 16, 2.0) == pytest.approx(0.5 + 2.0 * 0.5 * 4 / 4)
    assert uct_score(node, 16, 2.0) == pytest.approx(0.5 + 2.0 * math.sqrt(math.log(16) / 3))


def test_priors_are_a_softmax_over_mean_logprobs() -> None:
    priors = priors_from_logprobs([-0.1, -1.1, -2.1])
    assert sum(priors) == pytest.approx(1.0)
    assert priors[0] / priors[1] == pytest.approx(math.e)


@pytest.mark.parametrize(
    ("importance_value", "alpha", "c_min", "c_max", "width"),
    [
        (0.0, 8, 2, 4, 2),
        (0.2, 8, 2, 4, 2),
        (0.3, 8, 2, 4, 3),
        (0.9, 8, 2, 4, 4),
        (0.5, 0, 1, 5, 1),
        (1.0, 20, 3, 6, 6),
    ],
)
def test_branching_width_formula(importance_value, alpha, c_min, c_max, width) -> None:
    assert branching_width(importance_value, alpha=alpha, c_min=c_min, c_max=c_max) == width


def test_importance_is_largest_child_deviation() -> None:
    tree = Tree.new("q", (0,))
    tree.root.scores = CriticScores(combined=0.5)
    for value in (0.4, 0.9, 0.55):
        tree.add_child(0, _option(str(value)), simulation=0).scores = CriticScores(combined=value)
    assert importance(tree, tree.root) == pytest.approx(0.4)


def test_combine_renormalises_over_present_critics() -> None:
    weights = {"value": 0.0, "prm": 1.0, "orm": 0.5, "tool": 1.0}
    assert combine({"value": 0.2, "prm": 0.8, "orm": 0.2, "tool": None}, weights) == pytest.approx(0.6)
    assert combine({"value": None, "prm": None, "orm": None, "tool": None}, weights) == 0.5


def test_backprop_keeps_visit_and_value_invariants() -> None:
    tree, _ = _search(simulations=10)
    assert tree.root.visits == 10
    for node in tree.nodes:
        assert 0.0 <= node.q <= 1.0
        if node.children:
            child_visits = sum(tree.nodes[i].visits for i in node.children)
            # Each visit through a node either stopped there (expanding or at a
            # terminal node) or continued into exactly one child.
            assert child_visits <= node.visits
        if node.visits:
            assert node.value_sum == pytest.approx(node.q * node.visits)


def test_root_expansion_respects_branching_limits() -> None:
    tree, policy = _search(
        simulations=6, root_min_children=2, root_max_children=3, min_children=1, max_children=2
    )
    assert policy.calls[0] == ("propose", 2)
    assert 1 <= len(tree.root.children) <= 3
    for node in tree.nodes[1:]:
        assert len(node.children) <= 2


def test_filter_records_duplicates_with_their_sibling() -> None:
    tree, _ = _search(simulations=12)
    assert tree.filtered, "the fake policy repeats itself; some options must be filtered"
    for record in tree.filtered:
        sibling = tree.nodes[record.collided_with]
        assert sibling.parent == record.parent
        assert sibling.option.text.strip() == record.option.text.strip()
        assert record.similarity == 1.0
    for node in tree.nodes:
        texts = [tree.nodes[i].option.text.strip() for i in node.children]
        assert len(texts) == len(set(texts)), "no two children may say the same"


def test_without_filter_duplicates_become_children() -> None:
    tree, _ = _search(simulations=12, similarity=None)
    assert not tree.filtered
    texts = [[tree.nodes[i].option.text for i in node.children] for node in tree.nodes]
    assert any(len(t) != len(set(t)) for t in texts)


def test_terminal_nodes_carry_answers_and_are_not_expanded() -> None:
    tree, _ = _search(simulations=16)
    terminals = [node for node in tree.nodes if node.terminal]
    assert terminals
    for node in terminals:
        assert not node.children
        assert node.answer in {"7", "8"} or node.depth >= 10
        assert node.scores.orm == (1.0 if node.answer == "7" else 0.0)


def test_rollouts_score_non_terminal_children() -> None:
    tree, _ = _search(simulations=6, rollouts=2)
    inner = [node for node in tree.nodes[1:] if not node.terminal]
    assert inner
    for node in inner:
        assert len(node.rollouts) == 2
        expected = sum(r.orm for r in node.rollouts) / 2
        assert node.scores.orm == pytest.approx(expected)


def test_search_is_deterministic_under_a_seed() -> None:
    first, _ = _search(simulations=10)
    second, _ = _search(simulations=10)
    assert _snapshot(first) == _snapshot(second)


def test_resuming_a_tree_matches_an_uninterrupted_search() -> None:
    whole, _ = _search(simulations=10)
    policy = FakePolicy()
    part = run_search(
        question=QUESTION,
        policy=policy,
        critics=Critics(prm=FakePRM(), orm=FakeORM()),
        config=SearchConfig(simulations=4, seed=3, similarity="edit"),
        similarity=exact_similarity,
    )
    resumed = run_search(
        question=QUESTION,
        policy=policy,
        critics=Critics(prm=FakePRM(), orm=FakeORM()),
        config=SearchConfig(simulations=10, seed=3, similarity="edit"),
        similarity=exact_similarity,
        tree=part,
    )
    assert _snapshot(resumed) == _snapshot(whole)


def _tree_with_answers() -> Tree:
    tree = Tree.new("q", (0,))
    a = tree.add_child(0, _option("a"), simulation=0)
    b = tree.add_child(0, _option("b"), simulation=0)
    a.visits, a.value_sum = 5, 1.0  # many visits, low Q
    b.visits, b.value_sum = 2, 1.8  # few visits, high Q
    a.terminal, a.answer, a.scores = True, "3", CriticScores(orm=0.4)
    b.rollouts = [Rollout("x", 3, "5", 0.9, None), Rollout("y", 3, "3", 0.3, None)]
    c = tree.add_child(0, _option("c"), simulation=1)
    c.terminal, c.answer, c.scores = True, "3", CriticScores(orm=0.45)
    return tree


def test_answer_selection_methods_differ_as_designed() -> None:
    tree = _tree_with_answers()
    choices = choose_answers(tree)
    assert choices["visits"].answer == "3" and choices["visits"].node == 1
    assert choices["q"].answer == "5" and choices["q"].node == 2  # b's best rollout
    assert choices["orm"].answer == "5"
    # vote: "3" has 0.4 + 0.3 + 0.45 = 1.15 > "5" with 0.9
    assert choices["vote"].answer == "3"


def test_answer_selection_on_a_bare_root() -> None:
    choices = choose_answers(Tree.new("q", (0,)))
    assert all(choice.answer is None and choice.node == 0 for choice in choices.values())


def test_config_validation_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="simulations must be >= 1"):
        SearchConfig(simulations=0)
    with pytest.raises(ConfigError, match="weight_prm must be in"):
        SearchConfig(weight_prm=1.5)
    with pytest.raises(ConfigError, match="similarity_threshold"):
        SearchConfig(similarity_threshold=0)
    with pytest.raises(ConfigError, match="max_children"):
        SearchConfig(min_children=3, max_children=2)
    with pytest.raises(ConfigError, match="unknown search setting"):
        SearchConfig.from_dict({"simulatoins": 3})


def _snapshot(tree: Tree) -> list[dict]:
    return [
        {
            "index": node.index,
            "parent": node.parent,
            "text": node.option.text if node.option else "",
            "visits": node.visits,
            "q": round(node.q, 6),
            "prior": round(node.prior, 6),
            "combined": round(node.scores.combined, 6),
            "terminal": node.terminal,
            "answer": node.answer,
        }
        for node in tree.nodes
    ] + [{"filtered": record.option.text, "collided_with": record.collided_with} for record in tree.filtered]


def test_golden_tree() -> None:
    """A seeded search on fakes must reproduce the stored tree (set
    CANOPY_UPDATE_GOLDEN=1 to rewrite it after an intended change)."""
    tree, _ = _search(simulations=14, rollouts=1)
    snapshot = _snapshot(tree)
    if os.environ.get("CANOPY_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(snapshot, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert len(snapshot) == len(golden)
    for got, want in zip(snapshot, golden, strict=True):
        for key, value in want.items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, abs=1e-6), (got, want)
            else:
                assert got[key] == value, (got, want)


def test_a_separate_rollout_policy_gets_the_path_as_text() -> None:
    policy, rollout_policy = FakePolicy("main"), FakePolicy("small")
    tree = run_search(
        question=QUESTION,
        policy=policy,
        critics=Critics(prm=FakePRM(), orm=FakeORM()),
        config=SearchConfig(simulations=4, seed=3, similarity="edit", rollouts=2),
        similarity=exact_similarity,
        rollout_policy=rollout_policy,
    )
    assert not [call for call in policy.calls if call[0] == "complete"], (
        "rollouts must not use the main policy"
    )
    assert [call for call in rollout_policy.calls if call[0] == "complete"]
    assert all(len(node.rollouts) == 2 for node in tree.nodes[1:] if not node.terminal)
