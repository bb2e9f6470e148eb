"""One stored tree as a self-contained document: for a paper's figure, another
tool, or a colleague without the store (``canopy trees --export``, the Trees
page's download)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store import schema
from store.db import StoreError

FORMAT = "canopy-tree/1"
"""The document's ``format`` field; a change of its shape changes the number."""

_DROPPED = {"token_ids", "token_logprobs", "tree_id", "id"}  # long or store-internal


def tree_document(engine: Engine, tree_id: int) -> dict[str, Any]:
    """The tree, its problem and run, every node (all stored columns but token
    ids and their log-probs, with its critics' scores and rollouts), the parent-to-child ``edges``,
    the siblings filtered as near-duplicates and the chosen path.

    Raises:
        StoreError: no tree ``tree_id``.
    """
    with Session(engine) as session:
        tree = session.get(schema.Tree, tree_id)
        if tree is None:
            raise StoreError(f"no tree with id {tree_id}; `canopy trees` lists them")
        problem = session.get(schema.Problem, tree.problem_id)
        run = session.get(schema.Run, tree.run_id)
        nodes = session.exec(
            select(schema.Node).where(schema.Node.tree_id == tree_id).order_by(schema.Node.index)
        ).all()
        filtered = session.exec(
            select(schema.FilteredOption)
            .where(schema.FilteredOption.tree_id == tree_id)
            .order_by(schema.FilteredOption.id)
        ).all()
    chosen = set(tree.chosen_path or [])
    node_rows = []
    for node in nodes:
        row = {key: value for key, value in node.model_dump().items() if key not in _DROPPED}
        row["on_chosen_path"] = node.index in chosen
        node_rows.append(row)
    return {
        "format": FORMAT,
        "tree": _plain(tree.model_dump()),
        "problem": {
            "task": problem.task,
            "index": problem.index,
            "question": problem.question,
            "gold": problem.answer,
        },
        "run": {
            "id": run.id,
            "kind": run.kind,
            "method": run.method,
            "model": run.model,
            "backend": run.backend,
            "config": run.config,
            "critics": run.critics,
        },
        "nodes": [_plain(row) for row in node_rows],
        "edges": [[node.parent_index, node.index] for node in nodes if node.parent_index >= 0],
        "filtered": [
            _plain({k: v for k, v in option.model_dump().items() if k not in _DROPPED}) for option in filtered
        ],
    }


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Datetimes as ISO text, so the document is plain JSON."""
    return {key: value.isoformat() if hasattr(value, "isoformat") else value for key, value in row.items()}
