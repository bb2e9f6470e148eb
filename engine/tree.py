"""The search tree as plain data: a list of nodes indexed from ``ROOT_INDEX``.

Unlike a fixed-size array tree, this one grows node by node and can be rebuilt
from the store to resume a search.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.types import NO_PARENT, ROOT_INDEX, CriticScores, Option, ProgramCheck, Rollout


@dataclass
class Node:
    """One state: the root prompt, or its parent's state plus one option.

    Attributes:
        index: tree-local index, ``ROOT_INDEX`` for the root.
        parent: parent's index, ``NO_PARENT`` for the root.
        depth: options on the path from the root (root: 0).
        option: the option that led here (None at the root).
        prior: policy prior among its siblings, in [0, 1] (softmax of the
            siblings' mean token log-probs).
        visits: number of backups through this node, >= 0.
        value_sum: sum of backed-up values; each value in [0, 1].
        scores: each critic's view of this node.
        rollouts: fast completions made from this node.
        terminal: no option can follow (the solution ended, or max depth).
        answer: final answer of the trajectory when terminal, else None.
        children: indices of the children, in creation order.
        created_simulation: simulation that created the node (root: -1).
        expansions: how many times new children were sampled here (seeds each batch).
        target_width: n(s), the children this node should have, >= 1 once expanded.
        exhausted: sampling here produced only near-duplicates; stop widening.
    """

    index: int
    parent: int
    depth: int
    option: Option | None = None
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    scores: CriticScores = field(default_factory=CriticScores)
    rollouts: list[Rollout] = field(default_factory=list)
    terminal: bool = False
    answer: str | None = None
    children: list[int] = field(default_factory=list)
    created_simulation: int = -1
    expansions: int = 0
    target_width: int = 0
    exhausted: bool = False

    @property
    def q(self) -> float:
        """Mean backed-up value in [0, 1]; the node's own evaluation while unvisited."""
        return self.value_sum / self.visits if self.visits else self.scores.combined

    @property
    def expanded(self) -> bool:
        return self.expansions > 0


@dataclass(frozen=True)
class FilteredRecord:
    """A sampled option that was not made a child because a sibling said the same.

    Attributes:
        parent: index of the node it was sampled from.
        option: the option itself.
        similarity: similarity to ``collided_with``, in [0, 1].
        collided_with: index of the sibling it collided with.
        simulation: the simulation that sampled it.
        measure: "cosine" or "edit".
    """

    parent: int
    option: Option
    similarity: float
    collided_with: int
    simulation: int
    measure: str


@dataclass
class Tree:
    """A growing search tree over one question.

    Attributes:
        question: the problem text.
        root_state: token ids of the root prompt.
        nodes: all nodes; ``nodes[i].index == i``.
        filtered: every option the similarity filter dropped.
        simulations_done: completed simulations, >= 0.
        generated_tokens: tokens sampled for this tree (options, filtered ones
            included, rollouts, and the verifier's programs).
        programs: the programs the program verifier had the policy write for
            the question (empty when it is off or has not run yet).
    """

    question: str
    root_state: tuple[int, ...]
    nodes: list[Node] = field(default_factory=list)
    filtered: list[FilteredRecord] = field(default_factory=list)
    simulations_done: int = 0
    generated_tokens: int = 0
    programs: list[ProgramCheck] = field(default_factory=list)

    @classmethod
    def new(cls, question: str, root_state: tuple[int, ...]) -> Tree:
        return cls(question=question, root_state=root_state, nodes=[Node(ROOT_INDEX, NO_PARENT, 0)])

    @property
    def root(self) -> Node:
        return self.nodes[ROOT_INDEX]

    def add_child(self, parent: int, option: Option, *, simulation: int) -> Node:
        node = Node(
            index=len(self.nodes),
            parent=parent,
            depth=self.nodes[parent].depth + 1,
            option=option,
            created_simulation=simulation,
        )
        self.nodes.append(node)
        self.nodes[parent].children.append(node.index)
        return node

    def path(self, index: int) -> list[int]:
        """Indices from the root to ``index``, inclusive."""
        path = []
        while index != NO_PARENT:
            path.append(index)
            index = self.nodes[index].parent
        return path[::-1]

    def state(self, index: int) -> tuple[int, ...]:
        """Token ids of the node's state: the root prompt and every option on its path."""
        ids = list(self.root_state)
        for i in self.path(index)[1:]:
            ids.extend(self.nodes[i].option.token_ids)
        return tuple(ids)

    def steps(self, index: int) -> tuple[str, ...]:
        """The option texts on the path to ``index`` (without the prompt)."""
        return tuple(self.nodes[i].option.text for i in self.path(index)[1:])

    def summary(self) -> dict[str, Any]:
        """Counts for logs and the CLI."""
        return {
            "nodes": len(self.nodes),
            "filtered": len(self.filtered),
            "simulations": self.simulations_done,
            "terminal": sum(node.terminal for node in self.nodes),
            "max_depth": max(node.depth for node in self.nodes),
            "root_visits": self.root.visits,
        }
