"""Read-only queries shared by the CLI (the app keeps its own, cached)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.schema import Problem, Run, Tree


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
