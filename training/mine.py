"""Mine stored search trees into training examples (``trainingexample`` rows).

Five kinds, one payload format each (the trainers read these keys):

- ``sft``: ``{question, steps, answer, score, source}``. Per problem, the
  trajectories with the highest critic score whose ORM passes
  ``sft_orm_threshold`` (``source`` "critic"); with ``use_gold`` and a gold
  answer, the verified-correct ones instead, best critic score first
  (``source`` "gold"). At most ``max_sft_per_problem`` either way, counted over
  all trees of one problem in one ``mine_trees`` call.
- ``dpo``: ``{question, prefix, chosen, rejected, chosen_q, rejected_q}``.
  Under each parent, the sibling with the highest Q against every sibling at
  least ``dpo_margin`` worse (k - 1 pairs at most, not k^2).
- ``value``: ``{question, steps, target, source, count}``, one per node with
  an estimate (root included, ``steps == []``).
- ``prm``: ``{question, steps, label, estimate}``, one per non-root node with
  an estimate; ``label = estimate >= prm_threshold``.
- ``orm``: ``{question, steps, label}``, one per finished trajectory with an
  answer, only with ``use_gold`` and a gold answer.

"steps" are the option texts from the root (excluded) to the node, exactly as
stored. ``source_nodes`` holds the node indices used: the path from the root
(for dpo, the chosen and the rejected sibling).

Candidate trajectories (sft, orm, and the outcomes behind value/prm) are the
terminal nodes with an answer, and every stored rollout: a rollout from node N
is the path to N plus the rollout text as one final step. Rollouts are most of
the finished solutions a search produces, so leaving them out would throw away
most of the outcome signal.

Scores, and what stands in when a critic did not run:

- critic score of a node: ``combined_score``, else ``orm_score``, else Q. A
  rollout's critic score is its own ORM score, else its node's critic score.
- ORM of a node: ``orm_score``, else the mean ORM of its rollouts; of a rollout,
  its ``orm``. A trajectory without any ORM score never passes the SFT
  threshold: with the ORM off there is nothing to vouch for it.
- Monte Carlo estimate of a node (value and prm). With ``use_gold`` and a gold
  answer: the fraction of correct outcomes in its subtree, where the outcomes
  are the terminal descendants (the node itself included) and the rollouts made
  anywhere in the subtree; a terminal node or rollout without an answer counts
  as a wrong outcome (``source`` "verified", ``count`` outcomes). Otherwise the
  mean ORM of the subtree's rollouts (``source`` "rollouts", ``count``
  rollouts). Failing that, Q (``source`` "q", ``count`` visits); unvisited
  nodes without outcomes get no estimate and no value/prm example.
- ORM labels need ground truth: labelling trajectories with the ORM's own
  scores would train it on itself, so without gold there are no ORM examples.

People's step labels (``store.labels``; with ``use_labels``) come first: a node
with a human verdict gets value target 1.0 (correct) or 0.0 (incorrect) and that
PRM label instead of its Monte Carlo estimate (``source`` "human" in both
payloads, ``count`` the labels behind the verdict), and labelled nodes of trees
outside the mined set join as examples of their own. So a person's correction
reaches the critics in the next round even for a tree the round did not grow.

``mine_trees`` is idempotent: it first deletes the rows of the configured kinds
previously mined from the same trees for the same iteration (and the human-label
rows of labelled trees outside them), in the same transaction as the inserts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine.answers import answers_match
from engine.config import ConfigError
from store import schema
from store.db import StoreError
from store.labels import human_verdicts
from training.mine_config import KINDS, MineConfig

_TOLERANCE = 1e-9
"""Slack on threshold comparisons, so 0.7 - 0.5 counts as a gap of 0.2."""


@dataclass(frozen=True)
class _Trajectory:
    """A finished solution: a terminal node, or a rollout appended to a node's path."""

    path: list[int]
    steps: list[str]
    answer: str | None
    critic: float
    orm: float | None


@dataclass(frozen=True)
class _Estimate:
    target: float
    source: str
    count: int


@dataclass(frozen=True)
class MineResult:
    """What one ``mine_trees`` call wrote.

    Attributes:
        counts: kind -> new rows, for every configured kind (0 if none).
        human_labels: nodes whose value/prm examples came from people's labels.
    """

    counts: dict[str, int]
    human_labels: int = 0


@dataclass
class _StoredTree:
    """One tree's rows, indexed for walking."""

    tree_id: int
    problem: schema.Problem
    nodes: dict[int, schema.Node]
    children: dict[int, list[int]]

    def path(self, index: int) -> list[int]:
        path = []
        while index in self.nodes:
            path.append(index)
            index = self.nodes[index].parent_index
        return path[::-1]

    def steps(self, path: list[int]) -> list[str]:
        return [self.nodes[i].option_text for i in path[1:]]

    def subtree(self, index: int) -> list[int]:
        found, stack = [], [index]
        while stack:
            current = stack.pop()
            found.append(current)
            stack.extend(self.children.get(current, ()))
        return found

    @property
    def gold(self) -> str | None:
        return self.problem.answer


def _load(session: Session, tree_id: int) -> _StoredTree:
    # Rows, not engine.persist.load_tree: that one turns a NULL combined score
    # into 0.0, and the miner must tell "critic did not run" from a zero score.
    tree_row = session.get(schema.Tree, tree_id)
    if tree_row is None:
        raise StoreError(f"no tree {tree_id} in the database; list them with `canopy trees`")
    rows = session.exec(select(schema.Node).where(schema.Node.tree_id == tree_id)).all()
    nodes = {row.index: row for row in rows}
    children: dict[int, list[int]] = defaultdict(list)
    for row in sorted(rows, key=lambda row: row.index):
        if row.parent_index in nodes:
            children[row.parent_index].append(row.index)
    return _StoredTree(tree_id, session.get(schema.Problem, tree_row.problem_id), nodes, children)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _clamp(value: float) -> float:
    return min(1.0, max(0.0, float(value)))


def _q(node: schema.Node) -> float:
    """Q as stored: the mean backed-up value, 0 while unvisited."""
    return float(node.q)


def _critic_score(node: schema.Node) -> float:
    for score in (node.combined_score, node.orm_score):
        if score is not None:
            return float(score)
    return _q(node)


def _trajectories(tree: _StoredTree) -> list[_Trajectory]:
    """Terminal nodes with an answer, then rollouts, in node order."""
    found = []
    for index in sorted(tree.nodes):
        node = tree.nodes[index]
        path = tree.path(index)
        steps = tree.steps(path)
        critic = _critic_score(node)
        if node.terminal and node.answer is not None:
            rollout_orm = _mean([r["orm"] for r in node.rollouts if r.get("orm") is not None])
            orm = node.orm_score if node.orm_score is not None else rollout_orm
            found.append(_Trajectory(path, steps, node.answer, critic, orm))
        for rollout in node.rollouts:
            if rollout.get("answer") is None:
                continue
            orm = rollout.get("orm")
            found.append(
                _Trajectory(
                    path, [*steps, rollout["text"]], rollout["answer"], critic if orm is None else orm, orm
                )
            )
    return found


def _estimates(tree: _StoredTree, use_gold: bool) -> dict[int, _Estimate]:
    """The Monte Carlo estimate of every node that has one (see the module docstring)."""
    verified = use_gold and tree.gold is not None
    estimates = {}
    for index, node in tree.nodes.items():
        outcomes: list[float] = []
        for member in (tree.nodes[i] for i in tree.subtree(index)):
            if verified:
                if member.terminal:
                    outcomes.append(float(answers_match(member.answer, tree.gold)))
                outcomes.extend(float(answers_match(r.get("answer"), tree.gold)) for r in member.rollouts)
            else:
                outcomes.extend(float(r["orm"]) for r in member.rollouts if r.get("orm") is not None)
        if outcomes:
            source = "verified" if verified else "rollouts"
            estimates[index] = _Estimate(_clamp(sum(outcomes) / len(outcomes)), source, len(outcomes))
        elif node.visits > 0:
            estimates[index] = _Estimate(_clamp(_q(node)), "q", node.visits)
    return estimates


def _example(
    kind: str, tree: _StoredTree, nodes: list[int], payload: dict[str, Any]
) -> schema.TrainingExample:
    return schema.TrainingExample(
        kind=kind,
        payload={"question": tree.problem.question, **payload},
        source_tree_id=tree.tree_id,
        source_nodes=list(nodes),
    )


def _sft(trees: list[_StoredTree], config: MineConfig) -> list[schema.TrainingExample]:
    """Per problem (over ``trees``), the best trajectories; see the module docstring."""
    by_problem: dict[int, list[tuple[_StoredTree, _Trajectory]]] = defaultdict(list)
    for tree in trees:
        by_problem[tree.problem.id].extend((tree, t) for t in _trajectories(tree))
    examples = []
    for candidates in by_problem.values():
        gold = candidates[0][0].gold if candidates else None
        if config.use_gold and gold is not None:
            source = "gold"
            kept = [(tree, t) for tree, t in candidates if answers_match(t.answer, gold)]
        else:
            source = "critic"
            kept = [
                (tree, t)
                for tree, t in candidates
                if t.orm is not None and t.orm >= config.sft_orm_threshold - _TOLERANCE
            ]
        kept.sort(key=lambda pair: -pair[1].critic)  # stable: ties keep tree and node order
        seen: set[tuple[str, ...]] = set()
        for tree, trajectory in kept:
            if len(seen) == config.max_sft_per_problem:
                break
            if tuple(trajectory.steps) in seen:
                continue
            seen.add(tuple(trajectory.steps))
            payload = {
                "steps": trajectory.steps,
                "answer": trajectory.answer,
                "score": float(trajectory.critic),
                "source": source,
            }
            examples.append(_example("sft", tree, trajectory.path, payload))
    return examples


def _dpo(tree: _StoredTree, config: MineConfig) -> list[schema.TrainingExample]:
    examples = []
    for parent in sorted(tree.children):
        siblings = [
            tree.nodes[i] for i in tree.children[parent] if tree.nodes[i].visits >= config.dpo_min_visits
        ]
        if len(siblings) < 2:
            continue
        best = max(siblings, key=_q)  # first of equals: the lowest index
        prefix = tree.steps(tree.path(parent))
        for other in siblings:
            if other is best or _q(best) - _q(other) < config.dpo_margin - _TOLERANCE:
                continue
            payload = {
                "prefix": prefix,
                "chosen": best.option_text,
                "rejected": other.option_text,
                "chosen_q": float(_q(best)),
                "rejected_q": float(_q(other)),
            }
            examples.append(_example("dpo", tree, [best.index, other.index], payload))
    return examples


def _value_and_prm(
    tree: _StoredTree,
    config: MineConfig,
    verdicts: dict[int, tuple[bool, int]],
    *,
    only_labelled: bool = False,
) -> list[schema.TrainingExample]:
    """Value and PRM examples; ``verdicts`` (node index -> (human verdict, labels
    behind it)) replace estimates, and with ``only_labelled`` they are all there is."""
    estimates = {} if only_labelled else _estimates(tree, config.use_gold)
    for index, (correct, count) in verdicts.items():
        if index in tree.nodes:
            estimates[index] = _Estimate(1.0 if correct else 0.0, "human", count)
    examples = []
    for index, estimate in sorted(estimates.items()):
        path = tree.path(index)
        steps = tree.steps(path)
        if "value" in config.kinds:
            payload = {
                "steps": steps,
                "target": estimate.target,
                "source": estimate.source,
                "count": estimate.count,
            }
            examples.append(_example("value", tree, path, payload))
        if "prm" in config.kinds and index != path[0]:
            label = estimate.target >= config.prm_threshold - _TOLERANCE
            payload = {"steps": steps, "label": label, "estimate": estimate.target}
            if estimate.source == "human":
                payload["source"] = "human"
            examples.append(_example("prm", tree, path, payload))
    return examples


def _orm(tree: _StoredTree, config: MineConfig) -> list[schema.TrainingExample]:
    if not config.use_gold or tree.gold is None:
        return []
    return [
        _example("orm", tree, t.path, {"steps": t.steps, "label": answers_match(t.answer, tree.gold)})
        for t in _trajectories(tree)
    ]


def mine_trees(
    engine: Engine, tree_ids: Sequence[int], config: MineConfig, *, iteration_id: int | None = None
) -> MineResult:
    """Mine the given stored trees (and, with ``config.use_labels``, every labelled
    node) into ``trainingexample`` rows, in one transaction.

    Rows of ``config.kinds`` previously mined from these trees for the same
    ``iteration_id`` are replaced, so a re-run after a crash does not duplicate.
    Raises ``StoreError`` for an unknown tree or iteration.
    """
    tree_ids = list(dict.fromkeys(tree_ids))
    with Session(engine) as session:
        if iteration_id is not None and session.get(schema.Iteration, iteration_id) is None:
            raise StoreError(f"no iteration {iteration_id} in the database")
        trees = [_load(session, tree_id) for tree_id in tree_ids]
        labelled = _labelled(session, config)
        others = [_load(session, tree_id) for tree_id in sorted(set(labelled) - set(tree_ids))]
        examples: list[schema.TrainingExample] = []
        if "sft" in config.kinds:
            examples += _sft(trees, config)
        for tree in trees:
            if "dpo" in config.kinds:
                examples += _dpo(tree, config)
            if "value" in config.kinds or "prm" in config.kinds:
                examples += _value_and_prm(tree, config, labelled.get(tree.tree_id, {}))
            if "orm" in config.kinds:
                examples += _orm(tree, config)
        for tree in others:
            examples += _value_and_prm(tree, config, labelled[tree.tree_id], only_labelled=True)
        same_iteration = (
            col(schema.TrainingExample.iteration_id).is_(None)
            if iteration_id is None
            else schema.TrainingExample.iteration_id == iteration_id
        )
        session.exec(
            delete(schema.TrainingExample).where(
                col(schema.TrainingExample.source_tree_id).in_(tree_ids),
                col(schema.TrainingExample.kind).in_(config.kinds),
                same_iteration,
            )
        )
        earlier = session.exec(
            select(schema.TrainingExample).where(
                col(schema.TrainingExample.source_tree_id).in_([tree.tree_id for tree in others]),
                col(schema.TrainingExample.kind).in_(["value", "prm"]),
                same_iteration,
            )
        ).all()
        for row in earlier:  # only what an earlier call took from the labels, not those trees' own mining
            if row.payload.get("source") == "human":
                session.delete(row)
        counts = dict.fromkeys(config.kinds, 0)
        for example in examples:
            example.iteration_id = iteration_id
            counts[example.kind] += 1
        session.add_all(examples)
        session.commit()
    used = sum(len(nodes) for nodes in labelled.values())
    return MineResult(counts, human_labels=used)


def _labelled(session: Session, config: MineConfig) -> dict[int, dict[int, tuple[bool, int]]]:
    """tree id -> node index -> (human verdict, labels behind it), for nodes that
    still exist; empty unless ``use_labels`` and value or prm are mined."""
    if not config.use_labels or not {"value", "prm"} & set(config.kinds):
        return {}
    verdicts = human_verdicts(session)
    existing = set(
        session.exec(
            select(schema.Node.tree_id, schema.Node.index).where(
                col(schema.Node.tree_id).in_(sorted({tree_id for tree_id, _ in verdicts}))
            )
        ).all()
    )
    labelled: dict[int, dict[int, tuple[bool, int]]] = defaultdict(dict)
    for (tree_id, index), (correct, count) in verdicts.items():
        if (tree_id, index) in existing:
            labelled[tree_id][index] = (correct, count)
    return dict(labelled)


def _rows(engine: Engine, kind: str, iteration_id: int | None) -> list[schema.TrainingExample]:
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {KINDS}, got {kind!r}")
    query = select(schema.TrainingExample).where(schema.TrainingExample.kind == kind)
    if iteration_id is not None:
        query = query.where(schema.TrainingExample.iteration_id == iteration_id)
    with Session(engine) as session:
        return list(session.exec(query.order_by(schema.TrainingExample.id)).all())


def load_examples(engine: Engine, *, kind: str, iteration_id: int | None = None) -> list[dict[str, Any]]:
    """Payloads of stored examples of one kind (of one iteration, or of all when None), in id order."""
    return [dict(row.payload) for row in _rows(engine, kind, iteration_id)]


def trees_of_run(engine: Engine, run_id: int) -> list[int]:
    """Ids of the completed trees of a run, in id order; ``StoreError`` for an unknown run."""
    with Session(engine) as session:
        if session.get(schema.Run, run_id) is None:
            raise StoreError(f"no run {run_id} in the database; list trees with `canopy trees`")
        query = (
            select(schema.Tree.id)
            .where(schema.Tree.run_id == run_id, schema.Tree.status == "completed")
            .order_by(schema.Tree.id)
        )
        return list(session.exec(query).all())
