"""Queries shared by the CLI, the improve loop and the app (which wraps the
ones it uses in its own cache, see ``app/data.py``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.db import StoreError
from store.iterations import IterationMetrics
from store.schema import Iteration, Node, Problem, Run, Tree, utcnow


def list_trees(engine: Engine, *, run_id: int | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """Newest trees first, one flat dict each."""
    query = (
        select(Tree, Run, Problem)
        .join(Run, Tree.run_id == Run.id)
        .join(Problem, Tree.problem_id == Problem.id)
        .order_by(Tree.id.desc())
        .limit(limit)
    )
    if run_id is not None:
        query = query.where(Tree.run_id == run_id)
    with Session(engine) as session:
        rows = session.exec(query).all()
    return [
        {
            "tree_id": tree.id,
            "run_id": run.id,
            "status": tree.status,
            "model": run.model,
            "task": run.task,
            "problem_index": problem.index,
            "question": problem.question,
            "nodes": tree.node_count,
            "filtered": tree.filtered_count,
            "simulations": tree.simulations_done,
            "simulations_target": tree.simulations_target,
            "answer": tree.answer,
            "gold": problem.answer,
            "correct": tree.correct,
            "generated_tokens": tree.generated_tokens,
            "seconds": round(tree.seconds, 3),
            "created_at": tree.created_at.isoformat(),
        }
        for tree, run, problem in rows
    ]


# -- improve iterations -------------------------------------------------------------


def trajectory_counts(session: Session, tree_id: int) -> tuple[int, int]:
    """``(trajectories, answered)`` of a tree: its whole solutions (finished
    nodes and rollouts) and how many of them state an answer."""
    rows = session.exec(
        select(Node.terminal, Node.answer, Node.rollouts).where(
            Node.tree_id == tree_id, Node.parent_index >= 0
        )
    ).all()
    trajectories = answered = 0
    for terminal, answer, rollouts in rows:
        if terminal:
            trajectories += 1
            answered += answer is not None
        trajectories += len(rollouts or [])
        answered += sum(rollout.get("answer") is not None for rollout in rollouts or [])
    return trajectories, answered


def load_iteration(engine: Engine, iteration_id: int) -> Iteration:
    """The iteration row; raises ``StoreError`` if there is none."""
    with Session(engine) as session:
        row = session.get(Iteration, iteration_id)
    if row is None:
        raise StoreError(f"no iteration {iteration_id} in this database (the app's Improve page lists them)")
    return row


def iteration_chain(engine: Engine, iteration_id: int) -> list[Iteration]:
    """The iteration and its ancestors, oldest first."""
    chain = [load_iteration(engine, iteration_id)]
    while chain[0].parent_id is not None:
        chain.insert(0, load_iteration(engine, chain[0].parent_id))
    return chain


def create_iteration(
    engine: Engine, *, name: str, model: str, parent_id: int | None, metrics: IterationMetrics
) -> int:
    """Add a running iteration; returns its id."""
    with Session(engine) as session:
        row = Iteration(
            parent_id=parent_id,
            name=name,
            model=model,
            status="running",
            stage="starting",
            metrics=metrics.to_dict(),
        )
        session.add(row)
        session.commit()
        return row.id


def update_iteration(
    engine: Engine,
    iteration_id: int,
    *,
    metrics: IterationMetrics | None = None,
    status: str | None = None,
    stage: str | None = None,
    checkpoint_path: str | None = None,
) -> None:
    """Replace what is given (None leaves a column as it is) and stamp ``updated_at``."""
    with Session(engine) as session:
        row = session.get(Iteration, iteration_id)
        if row is None:
            raise StoreError(f"no iteration {iteration_id} in this database")
        if metrics is not None:
            row.metrics = metrics.to_dict()
        if status is not None:
            row.status = status
        if stage is not None:
            row.stage = stage
        if checkpoint_path is not None:
            row.checkpoint_path = checkpoint_path
        row.updated_at = utcnow()
        session.add(row)
        session.commit()


# -- critics against outcomes -------------------------------------------------------

OutcomeFn = Callable[[bool, str | None, Any, str | None], float | None]
"""(terminal, answer, rollouts, gold) -> 1.0/0.0 whether the node led to the gold
answer, or None if unknown: ``engine.calibration.verified_outcome``."""

CRITIC_NODE_COLUMNS = (
    "tree_id", "run_id", "index", "depth", "option_text", "visits", "q", "value_score", "prm_score",
    "orm_score", "tool_score", "combined_score", "terminal", "answer", "gold", "outcome",
)  # fmt: skip


def critic_nodes(engine: Engine, run_ids: Sequence[int], *, outcome: OutcomeFn) -> pd.DataFrame:
    """Every non-root node of the runs' trees with its scores, the problem's gold
    answer and ``outcome`` of the node (the store does not know how answers are
    checked, so the caller passes ``verified_outcome``); columns ``CRITIC_NODE_COLUMNS``."""
    statement = (
        select(
            Node.tree_id,
            Tree.run_id,
            Node.index,
            Node.depth,
            Node.option_text,
            Node.visits,
            Node.q,
            Node.value_score,
            Node.prm_score,
            Node.orm_score,
            Node.tool_score,
            Node.combined_score,
            Node.terminal,
            Node.answer,
            Node.rollouts,
            Problem.answer.label("gold"),
        )
        .join(Tree, Tree.id == Node.tree_id)
        .join(Problem, Problem.id == Tree.problem_id)
        .where(Tree.run_id.in_(list(run_ids)), Node.parent_index >= 0)
    )
    with engine.connect() as connection:
        rows = [dict(row._mapping) for row in connection.execute(statement)]
    for row in rows:
        row["outcome"] = outcome(row["terminal"], row["answer"], row.pop("rollouts"), row["gold"])
    return pd.DataFrame(rows, columns=list(CRITIC_NODE_COLUMNS))
