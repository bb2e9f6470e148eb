"""Choosing children (PUCT, UCT) and leaves (one, or several under a virtual loss),
policy priors, and adaptive branching widths."""

from __future__ import annotations

import math
from collections.abc import Sequence

from engine.tree import Node, Tree


def puct_score(child: Node, parent_visits: int, c: float) -> float:
    """``Q + c * P * sqrt(N_parent) / (1 + N_child)``; Q in [0, 1]."""
    return child.q + c * child.prior * math.sqrt(max(parent_visits, 1)) / (1 + child.visits)


def uct_score(child: Node, parent_visits: int, c: float) -> float:
    """``Q + c * sqrt(ln N_parent / N_child)``; unvisited children come first."""
    if child.visits == 0:
        return math.inf
    return child.q + c * math.sqrt(math.log(max(parent_visits, 1)) / child.visits)


SELECTION_RULES = {"puct": puct_score, "uct": uct_score}


def select_child(tree: Tree, node: Node, *, rule: str, c: float) -> Node:
    """The child maximising ``rule``; ties go to the higher Q, then the older child."""
    score = SELECTION_RULES[rule]
    children = [tree.nodes[i] for i in node.children]
    return max(children, key=lambda child: (score(child, node.visits, c), child.q, -child.index))


def needs_children(node: Node) -> bool:
    """True when a selection reaching ``node`` should sample new children here."""
    if node.terminal:
        return False
    if not node.expanded:
        return True
    return not node.exhausted and len(node.children) < node.target_width


def select_leaf(tree: Tree, *, rule: str, c: float) -> list[int]:
    """Descend from the root to the first node to expand (or a terminal node)."""
    node = tree.root
    path = [node.index]
    while node.children and not needs_children(node) and not node.terminal:
        node = select_child(tree, node, rule=rule, c=c)
        path.append(node.index)
    return path


def select_leaves(tree: Tree, *, count: int, rule: str, c: float) -> list[list[int]]:
    """Up to ``count`` paths to distinct leaves, chosen one after another under a
    virtual loss (as in AlphaGo's parallel search).

    After each descent every node on its path counts one more visit of value 0,
    so its Q falls and its exploration term shrinks, and the next descent is
    pushed elsewhere. Stops early when a descent reaches a leaf already chosen.
    The virtual visits are taken back before returning, so the tree is as it
    was; ``count = 1`` gives ``[select_leaf(...)]``.
    """
    paths: list[list[int]] = []
    try:
        while len(paths) < count:
            path = select_leaf(tree, rule=rule, c=c)
            if any(path[-1] == chosen[-1] for chosen in paths):
                break
            paths.append(path)
            for index in path:
                tree.nodes[index].visits += 1
    finally:
        for path in paths:
            for index in path:
                tree.nodes[index].visits -= 1
    return paths


def priors_from_logprobs(logprob_means: Sequence[float]) -> list[float]:
    """Softmax over siblings' mean token log-probs: the option-level policy prior."""
    top = max(logprob_means)
    weights = [math.exp(value - top) for value in logprob_means]
    total = sum(weights)
    return [weight / total for weight in weights]


def importance(tree: Tree, node: Node) -> float:
    """``I(s) = max_child |v(child) - v(s)|`` in [0, 1] over evaluated children."""
    if not node.children:
        return 0.0
    own = node.scores.combined
    return max(abs(tree.nodes[i].scores.combined - own) for i in node.children)


def branching_width(importance_value: float, *, alpha: float, c_min: int, c_max: int) -> int:
    """``n(s) = max(c_min, min(floor(alpha * I(s)) + 1, c_max))``."""
    return max(c_min, min(math.floor(alpha * importance_value) + 1, c_max))
