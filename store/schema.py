"""The store's tables. Every tree the engine grows lands here, node by node.

Conventions: times are UTC; scores are in [0, 1] or NULL where the critic did not
run; JSON columns hold plain lists/dicts. ``Node.index`` is tree-local
(the root is 0) and ``parent_index`` refers to it, so a tree can be copied
without rewriting ids. Nothing here imports torch or the engine.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint, text
from sqlmodel import Field, SQLModel

SCHEMA_VERSION = 4
"""The number of the newest Alembic revision (``store/migrations/versions``),
also stored in ``schemainfo``; a change of the tables comes with a migration."""

HEARTBEAT_TIMEOUT = timedelta(seconds=60)
"""A "running" run whose heartbeat is older than this has no writer any more."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """Stored times are UTC; SQLite hands them back without a timezone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def run_is_live(
    status: str, heartbeat_at: datetime | None, pid: int | None, *, now: datetime | None = None
) -> bool:
    """Whether a process is still writing a run: its ``status`` is "running", its
    heartbeat is at most ``HEARTBEAT_TIMEOUT`` old at ``now`` (default: the present)
    and, when ``pid`` is known, a process with that id exists on this machine.

    A run killed hard stays "running" in the store: a stale heartbeat says so
    after a minute, a missing process at once.
    """
    if status != "running" or heartbeat_at is None:
        return False
    if (now or utcnow()) - as_utc(heartbeat_at) > HEARTBEAT_TIMEOUT:
        return False
    return pid is None or _process_exists(pid)


def _process_exists(pid: int) -> bool:
    if pid <= 0:  # 0 and -1 would ask about process groups, not one process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    return True


def _json(default: Any) -> Any:
    return Field(default_factory=lambda: type(default)(default), sa_column=Column(JSON, nullable=False))


class SchemaInfo(SQLModel, table=True):
    """Key/value facts about the database itself (``schema_version``)."""

    key: str = Field(primary_key=True)
    value: str


class Run(SQLModel, table=True):
    """One invocation that produced trees (a search, an evaluation, ...).

    ``status`` is "running", "completed", "failed" or "interrupted". A process
    killed hard leaves "running": ``run_is_live`` tells from ``heartbeat_at`` and
    ``pid`` (the writer's process id) whether anyone still writes it. ``backend``
    is the policy's ``load_policy`` backend (NULL: made before schema 2, unknown). ``config``
    is the full ``SearchConfig`` with the critic weights actually in force
    (``critics`` says which critics ran).
    """

    id: int | None = Field(default=None, primary_key=True)
    kind: str = "search"
    method: str = "mcts"
    status: str = "running"
    model: str
    rollout_model: str | None = None
    backend: str | None = None
    task: str
    seed: int = 0
    config: dict[str, Any] = _json({})
    critics: dict[str, Any] = _json({})
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id")
    error: str | None = None
    pid: int | None = None
    created_at: datetime = Field(default_factory=utcnow)
    heartbeat_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    seconds: float = 0.0
    generated_tokens: int = 0


class Problem(SQLModel, table=True):
    """A question, with its gold answer where known."""

    __table_args__ = (Index("ix_problem_task_index", "task", "index"),)

    id: int | None = Field(default=None, primary_key=True)
    task: str
    index: int | None = None
    question: str
    answer: str | None = None
    meta: dict[str, Any] = _json({})


class Tree(SQLModel, table=True):
    """One search over one problem.

    ``answers`` maps each answer-selection method ("visits", "q", "orm",
    "vote") to its answer; ``answer`` is the one the run's config chose, and
    ``chosen_path`` lists the node indices from the root along that choice.
    ``correct`` is NULL when the problem has no gold answer.
    """

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    problem_id: int = Field(foreign_key="problem.id", index=True)
    status: str = "running"
    prompt: str = ""
    simulations_done: int = 0
    simulations_target: int = 0
    node_count: int = 0
    filtered_count: int = 0
    answer: str | None = None
    answers: dict[str, Any] = _json({})
    chosen_path: list[int] = _json([])
    correct: bool | None = None
    generated_tokens: int = 0
    prefill_tokens: int = 0
    seconds: float = 0.0
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Node(SQLModel, table=True):
    """A state in a tree: the root prompt, or its parent's state plus one option.

    ``q`` = ``value_sum / visits`` in [0, 1] (0 while unvisited). ``prior`` is
    the option's policy prior among its siblings, in [0, 1]. The score columns are
    each critic's own view (``combined`` is their weighted mean, what the search
    backs up). ``rollouts`` is a list of ``{text, tokens, answer, orm, tool}``.
    ``token_logprobs`` holds each of ``token_ids``' log-probability under the
    policy when it was sampled (empty for nodes stored before schema 4).
    """

    __table_args__ = (UniqueConstraint("tree_id", "index"),)

    id: int | None = Field(default=None, primary_key=True)
    tree_id: int = Field(foreign_key="tree.id", index=True)
    index: int
    parent_index: int = -1
    depth: int = 0
    option_text: str = ""
    token_ids: list[int] = _json([])
    token_logprobs: list[float] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default=text("'[]'"))
    )
    token_count: int = 0
    logprob_sum: float = 0.0
    logprob_mean: float = 0.0
    stop_reason: str = ""
    prior: float = 1.0
    visits: int = 0
    value_sum: float = 0.0
    q: float = 0.0
    value_score: float | None = None
    prm_score: float | None = None
    orm_score: float | None = None
    tool_score: float | None = None
    combined_score: float | None = None
    rollouts: list[dict[str, Any]] = _json([])
    terminal: bool = False
    answer: str | None = None
    created_simulation: int = -1
    expansions: int = 0
    target_width: int = 0
    exhausted: bool = False


class FilteredOption(SQLModel, table=True):
    """A sampled option dropped as too similar to a sibling, kept for inspection."""

    id: int | None = Field(default=None, primary_key=True)
    tree_id: int = Field(foreign_key="tree.id", index=True)
    parent_index: int
    text: str
    token_count: int = 0
    similarity: float
    measure: str = "cosine"
    collided_with_index: int
    simulation: int


class VerifierProgram(SQLModel, table=True):
    """A program the policy wrote for a tree's problem (the program-aided
    verifier's evidence), and what running it in the sandbox gave.

    ``verdict`` is the normalised last number it printed, NULL for no verdict;
    ``error`` keeps the interpreter's message for inspection. ``index`` orders
    a tree's programs from 0. Added within schema version 1 (so migration 0002
    creates it where a version-1 store lacks it).
    """

    id: int | None = Field(default=None, primary_key=True)
    tree_id: int = Field(foreign_key="tree.id", index=True)
    index: int
    text: str
    tokens: int = 0
    status: str
    output: str = ""
    error: str = ""
    verdict: str | None = None


LABEL_VERDICTS = ("correct", "incorrect", "unsure")
"""What a person can say about a step, in the order the studio offers them."""


class Label(SQLModel, table=True):
    """A person's verdict on one node's step: ``verdict`` is one of
    ``LABEL_VERDICTS``, ``note`` free text. One label per author and node (a
    second one replaces it); ``run_id`` is the tree's run, kept so labels can be
    filtered by run without a join. Human labels take precedence over mined
    ones when the improve loop trains the PRM and the value head.
    """

    __table_args__ = (UniqueConstraint("tree_id", "node_index", "author"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    tree_id: int = Field(foreign_key="tree.id", index=True)
    node_index: int
    verdict: str
    note: str = ""
    author: str
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class SearchEvent(SQLModel, table=True):
    """One phase of one simulation (``seq`` orders events within a tree)."""

    __table_args__ = (Index("ix_searchevent_tree_sim", "tree_id", "simulation"),)

    id: int | None = Field(default=None, primary_key=True)
    tree_id: int = Field(foreign_key="tree.id")
    simulation: int
    seq: int
    phase: str
    node_index: int
    data: dict[str, Any] = _json({})


class Iteration(SQLModel, table=True):
    """One round of self-improvement and the checkpoint it produced."""

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int | None = Field(default=None, foreign_key="iteration.id")
    name: str = ""
    model: str = ""
    checkpoint_path: str | None = None
    status: str = "running"
    stage: str = ""
    metrics: dict[str, Any] = _json({})
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class TrainingExample(SQLModel, table=True):
    """A mined example; ``kind`` is one of ``store.example_kinds.EXAMPLE_KINDS``."""

    id: int | None = Field(default=None, primary_key=True)
    iteration_id: int | None = Field(default=None, foreign_key="iteration.id", index=True)
    kind: str = Field(index=True)
    payload: dict[str, Any] = _json({})
    source_tree_id: int | None = Field(default=None, foreign_key="tree.id")
    source_nodes: list[int] = _json([])
    created_at: datetime = Field(default_factory=utcnow)
