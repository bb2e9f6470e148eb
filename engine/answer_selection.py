"""Picking the final answer from a finished tree, four ways.

- ``visits``: follow the most-visited child from the root.
- ``q``: follow the highest-Q child from the root.
- ``orm``: the trajectory (terminal node or rollout) with the best ORM score.
- ``vote``: majority over all trajectories' answers, each weighted by its ORM
  score (1 when the ORM is off), with the program verifier's results as extra
  votes when asked (``program_votes``).
A path that ends at a non-terminal node takes the answer of its best rollout.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from engine.answers import normalize_number
from engine.tree import Node, Tree

METHODS = ("vote", "visits", "q", "orm")


@dataclass(frozen=True)
class AnswerChoice:
    """One method's pick: the answer (normalised, or None) and the node it came from."""

    method: str
    answer: str | None
    node: int


@dataclass(frozen=True)
class _Candidate:
    answer: str
    weight: float
    node: int


def _candidates(tree: Tree) -> list[_Candidate]:
    found = []
    for node in tree.nodes:
        if node.terminal and node.answer is not None:
            weight = node.scores.orm if node.scores.orm is not None else 1.0
            found.append(_Candidate(node.answer, weight, node.index))
        for rollout in node.rollouts:
            if rollout.answer is not None:
                weight = rollout.orm if rollout.orm is not None else 1.0
                found.append(_Candidate(rollout.answer, weight, node.index))
    return found


def _leaf_answer(node: Node) -> str | None:
    if node.terminal:
        return node.answer
    answered = [r for r in node.rollouts if r.answer is not None]
    if not answered:
        return None
    return max(answered, key=lambda r: r.orm if r.orm is not None else 0.0).answer


def _greedy_path(tree: Tree, key) -> AnswerChoice:
    node = tree.root
    while node.children:
        node = max((tree.nodes[i] for i in node.children), key=key)
    return node


def vote_totals(tree: Tree, *, program_votes: float = 0.0) -> dict[str, float]:
    """Each answer's weight in the vote: the weights of the trajectories that
    reach it (their ORM score, 1 when the ORM is off), plus ``program_votes``
    for each of the tree's verifier programs whose result it is. Keys are
    normalised answers; answers only programs reach are included."""
    totals: dict[str, float] = defaultdict(float)
    for candidate in _candidates(tree):
        totals[normalize_number(candidate.answer) or candidate.answer] += candidate.weight
    if program_votes > 0:
        for program in tree.programs:
            if program.verdict is not None:
                totals[program.verdict] += program_votes
    return dict(totals)


def vote_leader(tree: Tree, *, program_votes: float = 0.0) -> tuple[str | None, float]:
    """The answer the vote elects (the heaviest that some trajectory reached;
    None when none did) and its lead over the heaviest other answer, programs'
    answers included."""
    totals = vote_totals(tree, program_votes=program_votes)
    reached = {normalize_number(c.answer) or c.answer for c in _candidates(tree)}
    if not reached:
        return None, 0.0
    winner = max(reached, key=lambda answer: (totals[answer], answer))
    runner_up = max((weight for answer, weight in totals.items() if answer != winner), default=0.0)
    return winner, totals[winner] - runner_up


def choose_answers(tree: Tree, *, program_votes: float = 0.0) -> dict[str, AnswerChoice]:
    """Every method's choice; the root stands in when a method finds nothing.

    The vote counts the verifier's programs with weight ``program_votes`` each
    (see ``vote_totals``) but only elects an answer some trajectory in the tree
    reached, so the chosen answer always has a path to show.
    """
    choices = {}
    for method, key in (
        ("visits", lambda n: (n.visits, n.q, -n.index)),
        ("q", lambda n: (n.q, n.visits, -n.index)),
    ):
        leaf = _greedy_path(tree, key)
        choices[method] = AnswerChoice(method, _leaf_answer(leaf), leaf.index)
    candidates = _candidates(tree)
    if candidates:
        best = max(candidates, key=lambda c: (c.weight, -c.node))
        choices["orm"] = AnswerChoice("orm", best.answer, best.node)
        winner, _ = vote_leader(tree, program_votes=program_votes)
        node = max(
            (c for c in candidates if (normalize_number(c.answer) or c.answer) == winner),
            key=lambda c: (c.weight, -c.node),
        ).node
        choices["vote"] = AnswerChoice("vote", winner, node)
    else:
        for method in ("orm", "vote"):
            choices[method] = AnswerChoice(method, None, tree.root.index)
    return choices
