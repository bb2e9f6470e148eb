"""What credit per token reads from the store: one node's tokens with the
log-probs the policy gave them when it sampled them, a tree's tokens for
teacher forcing, and the improve rounds that trained their policy with DPO
(whose implicit per-token reward the studio can show). Plain queries: no
engine, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.db import StoreError
from store.iterations import IterationMetrics
from store.schema import Iteration, Node, Tree


@dataclass(frozen=True)
class NodeTokens:
    """One node of a tree, token by token.

    Attributes:
        index: the node's tree-local index.
        parent: its parent's index; -1 at the root.
        token_ids: the root's prompt, or the node's option, as token ids.
        logprobs: each option token's log-probability under the policy when it
            was sampled, in (-inf, 0]; empty at the root and for nodes stored
            before schema 4.
    """

    index: int
    parent: int
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


@dataclass(frozen=True)
class DPORound:
    """An improve iteration whose round trained the policy with DPO.

    Attributes:
        iteration_id: the ``Iteration`` row.
        name: its name, as the Improve page shows it.
        policy: the DPO-trained policy's checkpoint directory (the round's
            policy once DPO ran).
        beta: DPO's beta in that round (> 0), the scale of its implicit reward.
    """

    iteration_id: int
    name: str
    policy: str
    beta: float


def node_tokens(engine: Engine, tree_id: int, index: int) -> NodeTokens:
    """Node ``index`` of tree ``tree_id``; raises ``StoreError`` if there is none."""
    with Session(engine) as session:
        row = session.exec(select(Node).where(Node.tree_id == tree_id, Node.index == index)).first()
    if row is None:
        raise StoreError(f"tree {tree_id} has no node {index}")
    return NodeTokens(row.index, row.parent_index, tuple(row.token_ids), tuple(row.token_logprobs))


def tree_tokens(engine: Engine, tree_id: int) -> list[NodeTokens]:
    """Every node of tree ``tree_id`` in index order (the root first); raises
    ``StoreError`` if there is no such tree."""
    with Session(engine) as session:
        if session.get(Tree, tree_id) is None:
            raise StoreError(f"no tree {tree_id} in this database (`canopy trees` lists them)")
        rows = session.exec(select(Node).where(Node.tree_id == tree_id).order_by(Node.index)).all()
    return [NodeTokens(r.index, r.parent_index, tuple(r.token_ids), tuple(r.token_logprobs)) for r in rows]


def dpo_round(iteration_id: int, name: str, metrics: IterationMetrics) -> DPORound | None:
    """The DPO round an iteration's metrics describe, or None when its round
    trained no DPO policy: DPO was off, skipped for want of pairs, not reached
    yet, or the row was not written by the improve loop (no DPO beta in its
    settings)."""
    beta = metrics.config.get("dpo_train", {}).get("beta")
    trained = "dpo" in metrics.done and "dpo" not in metrics.skipped
    if not trained or metrics.checkpoints is None or beta is None:
        return None
    return DPORound(iteration_id, name, metrics.checkpoints.policy, float(beta))


def dpo_rounds(engine: Engine) -> list[DPORound]:
    """Every iteration whose round trained the policy with DPO, newest first."""
    with Session(engine) as session:
        rows = session.exec(select(Iteration).order_by(Iteration.id.desc())).all()
    rounds = (dpo_round(row.id, row.name, IterationMetrics.from_dict(row.metrics)) for row in rows)
    return [found for found in rounds if found is not None]
