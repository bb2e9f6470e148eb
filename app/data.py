"""Reading the store for the app: one cached engine per database URL and cached
queries that return plain DataFrames. Queries about a tree that may still be
growing take a ``stamp`` (see ``tree_stamp``) so the cache refreshes exactly when
the tree changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import streamlit as st
from sqlalchemy import case, func, inspect, select
from sqlalchemy.engine import Engine

from engine.calibration import verified_outcome
from store import queries
from store.db import StoreError, default_db_url, make_engine, normalize_url
from store.examples import export_records, jsonl_line
from store.labels import RECORD_KEYS as LABEL_RECORD_KEYS
from store.labels import human_verdicts as store_human_verdicts
from store.labels import label_records
from store.schema import (
    FilteredOption,
    Iteration,
    Label,
    Node,
    Problem,
    Run,
    SearchEvent,
    TrainingExample,
    Tree,
    VerifierProgram,
    run_is_live,
)
from store.schema import as_utc as schema_as_utc

SCORE_COLUMNS = {
    "value": "value_score",
    "prm": "prm_score",
    "orm": "orm_score",
    "tool": "tool_score",
    "combined": "combined_score",
    "q": "q",
}
CRITIC_NAMES = {
    "value": "Value function",
    "prm": "PRM",
    "orm": "ORM",
    "tool": "Arithmetic checker",
    "combined": "Combined",
    "q": "Q",
}

_NODE_COLUMNS = [
    Node.index,
    Node.parent_index,
    Node.depth,
    Node.option_text,
    Node.token_count,
    Node.logprob_mean,
    Node.stop_reason,
    Node.prior,
    Node.visits,
    Node.value_sum,
    Node.q,
    Node.value_score,
    Node.prm_score,
    Node.orm_score,
    Node.tool_score,
    Node.combined_score,
    Node.rollouts,
    Node.terminal,
    Node.answer,
    Node.created_simulation,
    Node.target_width,
    Node.exhausted,
]


def db_url() -> str:
    """The database the app reads: ``$CANOPY_DB``, else the default store."""
    return normalize_url(default_db_url())


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    return make_engine(url, create=False)


def engine(url: str) -> Engine:
    """The store at ``url``; raises ``StoreError`` (one-line reason) if unusable.
    Failures are not cached, so a database created later is picked up."""
    return _engine(url)


def store_problem(url: str) -> str | None:
    """Why the store cannot be read, or None."""
    try:
        engine(url)
    except StoreError as exc:
        return str(exc)
    return None


def present(value: Any) -> bool:
    """Not None and not a pandas missing value (NaN/NaT)."""
    if value is None:
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # lists and dicts are present
        return True


def as_utc(moment: datetime | None) -> datetime | None:
    """Stored times are UTC; older rows may come back without a timezone."""
    return schema_as_utc(moment) if present(moment) else None


def run_state(
    status: str, heartbeat_at: datetime | None, pid: int | None, now: datetime | None = None
) -> str:
    """The status to show: a "running" run that no process writes any more (see
    ``run_is_live``: a stale heartbeat, or its process gone) is "stopped (no heartbeat)"."""
    if status == "running" and not run_is_live(status, as_utc(heartbeat_at), pid, now=now):
        return "stopped (no heartbeat)"
    return status


STATE_ICONS = {
    "running": "● running",
    "completed": "✓ completed",
    "failed": "✗ failed",
    "interrupted": "■ interrupted",
    "stopped (no heartbeat)": "⚠ stopped (no heartbeat)",
}


def _rows(url: str, statement: Any) -> list[dict[str, Any]]:
    with engine(url).connect() as connection:
        return [dict(row._mapping) for row in connection.execute(statement)]


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


@st.cache_data(ttl=1, show_spinner=False)
def runs(url: str) -> pd.DataFrame:
    """One row per run with tree totals and the state to display, newest first."""
    totals = (
        select(
            Tree.run_id,
            func.count(Tree.id).label("trees"),
            func.sum(Tree.node_count).label("nodes"),
            func.sum(Tree.simulations_done).label("simulations"),
            func.count(Tree.correct).label("graded"),
            func.sum(case((Tree.correct.is_(True), 1), else_=0)).label("correct"),
        )
        .group_by(Tree.run_id)
        .subquery()
    )
    statement = (
        select(
            Run.id,
            Run.created_at,
            Run.status,
            Run.model,
            Run.rollout_model,
            Run.task,
            Run.kind,
            Run.method,
            Run.seed,
            Run.iteration_id,
            Iteration.name.label("iteration"),
            Run.error,
            Run.heartbeat_at,
            Run.finished_at,
            Run.seconds,
            Run.pid,
            Run.config,
            func.coalesce(totals.c.trees, 0).label("trees"),
            func.coalesce(totals.c.nodes, 0).label("nodes"),
            func.coalesce(totals.c.simulations, 0).label("simulations"),
            func.coalesce(totals.c.graded, 0).label("graded"),
            func.coalesce(totals.c.correct, 0).label("correct"),
        )
        .outerjoin(totals, totals.c.run_id == Run.id)
        .outerjoin(Iteration, Iteration.id == Run.iteration_id)
        .order_by(Run.id.desc())
    )
    rows = _rows(url, statement)
    now = datetime.now(UTC)
    for row in rows:
        row["created_at"] = as_utc(row["created_at"])
        row["state"] = run_state(row["status"], row["heartbeat_at"], row["pid"], now)
        row["shown_state"] = STATE_ICONS.get(row["state"], row["state"])
        row["accuracy"] = row["correct"] / row["graded"] if row["graded"] else None
    columns = [c.name for c in statement.selected_columns] + ["state", "shown_state", "accuracy"]
    return _frame(rows, columns)


def run_label(run: dict[str, Any] | pd.Series) -> str:
    created = as_utc(run["created_at"])
    when = created.strftime("%Y-%m-%d %H:%M") if created else "?"
    return f"Run {run['id']} · {run['model']} · {run['task']} · {when} · {run['state']}"


@st.cache_data(ttl=1, show_spinner=False)
def trees(url: str) -> pd.DataFrame:
    """One row per tree with its problem and its run's model/iteration, newest first."""
    statement = (
        select(
            Tree.id,
            Tree.run_id,
            Tree.status,
            Tree.simulations_done,
            Tree.simulations_target,
            Tree.node_count,
            Tree.filtered_count,
            Tree.answer,
            Tree.answers,
            Tree.chosen_path,
            Tree.correct,
            Tree.seconds,
            Tree.generated_tokens,
            Tree.created_at,
            Tree.updated_at,
            Tree.problem_id,
            Problem.task,
            Problem.index.label("problem_index"),
            Problem.question,
            Problem.answer.label("gold"),
            Run.model,
            Run.iteration_id,
            Run.status.label("run_status"),
        )
        .join(Problem, Problem.id == Tree.problem_id)
        .join(Run, Run.id == Tree.run_id)
        .order_by(Tree.id.desc())
    )
    rows = _rows(url, statement)
    for row in rows:
        row["created_at"] = as_utc(row["created_at"])
    return _frame(rows, [c.name for c in statement.selected_columns])


def tree_label(tree: dict[str, Any] | pd.Series, width: int = 70) -> str:
    question = " ".join(str(tree["question"]).split())
    question = question if len(question) <= width else question[: width - 1] + "…"
    verdict = (
        {True: "✓ correct", False: "✗ wrong"}[bool(tree["correct"])]
        if present(tree["correct"])
        else "not graded"
    )
    return f"Tree {tree['id']} · {verdict} · {tree['node_count']} nodes · {question}"


@st.cache_data(ttl=2, show_spinner=False)
def text_hits(url: str, query: str, limit: int) -> pd.DataFrame:
    """Nodes whose option, answer or rollouts hold every word of ``query``, best first."""
    from store.text_index import search_text

    hits = search_text(engine(url), query, limit=limit)
    return pd.DataFrame([vars(hit) for hit in hits], columns=["tree_id", "node_index", "rank", "snippet"])


def tree_stamp(url: str, tree_id: int) -> tuple[Any, ...]:
    """Changes whenever the tree's stored content does (uncached, cheap)."""
    statement = select(
        Tree.updated_at,
        Tree.simulations_done,
        Tree.status,
        select(func.count(Node.id)).where(Node.tree_id == tree_id).scalar_subquery(),
        select(func.count(FilteredOption.id)).where(FilteredOption.tree_id == tree_id).scalar_subquery(),
    ).where(Tree.id == tree_id)
    rows = _rows(url, statement)
    return tuple(rows[0].values()) if rows else ()


@st.cache_data(max_entries=64, show_spinner=False)
def tree_nodes(url: str, tree_id: int, stamp: tuple[Any, ...]) -> pd.DataFrame:
    statement = select(*_NODE_COLUMNS).where(Node.tree_id == tree_id).order_by(Node.index)
    return _frame(_rows(url, statement), [c.name for c in _NODE_COLUMNS])


@st.cache_data(max_entries=64, show_spinner=False)
def tree_filtered(url: str, tree_id: int, stamp: tuple[Any, ...]) -> pd.DataFrame:
    columns = [
        FilteredOption.id,
        FilteredOption.parent_index,
        FilteredOption.text,
        FilteredOption.similarity,
        FilteredOption.measure,
        FilteredOption.collided_with_index,
        FilteredOption.simulation,
    ]
    statement = select(*columns).where(FilteredOption.tree_id == tree_id).order_by(FilteredOption.id)
    return _frame(_rows(url, statement), [c.name for c in columns])


@st.cache_data(max_entries=64, show_spinner=False)
def tree_programs(url: str, tree_id: int, stamp: tuple[Any, ...]) -> pd.DataFrame:
    """The programs the program checker wrote for the tree's problem, in order
    (empty where the checker was off, or in a database made before it existed)."""
    columns = [
        VerifierProgram.index,
        VerifierProgram.text,
        VerifierProgram.tokens,
        VerifierProgram.status,
        VerifierProgram.output,
        VerifierProgram.error,
        VerifierProgram.verdict,
    ]
    statement = select(*columns).where(VerifierProgram.tree_id == tree_id).order_by(VerifierProgram.index)
    if "verifierprogram" not in inspect(engine(url)).get_table_names():
        return _frame([], [c.name for c in columns])
    return _frame(_rows(url, statement), [c.name for c in columns])


@st.cache_data(max_entries=64, show_spinner=False)
def tree_backups(url: str, tree_id: int, stamp: tuple[Any, ...]) -> list[tuple[int, list[int], float]]:
    """``(simulation, path, value)`` of each backpropagate event, in order."""
    statement = (
        select(SearchEvent.simulation, SearchEvent.data)
        .where(SearchEvent.tree_id == tree_id, SearchEvent.phase == "backpropagate")
        .order_by(SearchEvent.seq)
    )
    backups = []
    for row in _rows(url, statement):
        data = row["data"] if isinstance(row["data"], dict) else {}
        path, value = data.get("path"), data.get("value")
        if isinstance(path, list) and isinstance(value, int | float):
            backups.append((int(row["simulation"]), [int(i) for i in path], float(value)))
    return backups


@st.cache_data(ttl=2, show_spinner=False)
def critic_nodes(url: str, run_ids: tuple[int, ...]) -> pd.DataFrame:
    """Every node of the given runs' trees, with the problem's gold answer and a
    verified outcome where one can be worked out (see ``verified_outcome``)."""
    return queries.critic_nodes(engine(url), run_ids, outcome=verified_outcome)


@st.cache_data(ttl=2, show_spinner=False)
def iterations(url: str) -> pd.DataFrame:
    columns = [
        Iteration.id,
        Iteration.parent_id,
        Iteration.name,
        Iteration.model,
        Iteration.checkpoint_path,
        Iteration.status,
        Iteration.stage,
        Iteration.metrics,
        Iteration.created_at,
        Iteration.updated_at,
    ]
    statement = select(*columns).order_by(Iteration.id)
    return _frame(_rows(url, statement), [c.name for c in columns])


@st.cache_data(ttl=2, show_spinner=False)
def example_counts(url: str) -> pd.DataFrame:
    statement = select(
        TrainingExample.kind, TrainingExample.iteration_id, func.count(TrainingExample.id).label("examples")
    ).group_by(TrainingExample.kind, TrainingExample.iteration_id)
    return _frame(_rows(url, statement), ["kind", "iteration_id", "examples"])


@st.cache_data(ttl=5, show_spinner=False, max_entries=8)
def examples_jsonl(url: str, kinds: tuple[str, ...], iteration_ids: tuple[int | None, ...]) -> str:
    """The chosen examples (empty means all; None is "no iteration") as JSONL, line
    for line what ``canopy export`` writes (see ``store.examples``)."""
    records = export_records(engine(url), kinds=kinds, iteration_ids=iteration_ids)
    return "".join(jsonl_line(record) for record in records)


def run_progress(url: str, run_id: int) -> tuple[dict[str, Any] | None, pd.DataFrame]:
    """The run and its trees, read fresh (uncached) for the live view."""
    run_rows = _rows(
        url,
        select(
            Run.id,
            Run.status,
            Run.model,
            Run.task,
            Run.error,
            Run.heartbeat_at,
            Run.pid,
            Run.created_at,
            Run.seconds,
        ).where(Run.id == run_id),
    )
    columns = [
        Tree.id,
        Tree.status,
        Tree.simulations_done,
        Tree.simulations_target,
        Tree.node_count,
        Tree.filtered_count,
        Tree.answer,
        Tree.chosen_path,
        Tree.correct,
        Problem.question,
        Problem.answer.label("gold"),
    ]
    statement = (
        select(*columns)
        .join(Problem, Problem.id == Tree.problem_id)
        .where(Tree.run_id == run_id)
        .order_by(Tree.id)
    )
    tree_rows = _frame(_rows(url, statement), [c.name for c in statement.selected_columns])
    if not run_rows:
        return None, tree_rows
    run = run_rows[0]
    run["state"] = run_state(run["status"], run["heartbeat_at"], run["pid"])
    return run, tree_rows


# -- people's labels (store.labels) ------------------------------------------------


def labels_stamp(url: str) -> tuple[Any, ...]:
    """Changes whenever a label is added, replaced or removed (its count and
    newest change), so the label queries below refresh exactly then."""
    statement = select(func.count(Label.id), func.max(Label.updated_at), func.sum(Label.id))
    rows = _rows(url, statement)
    return tuple(rows[0].values()) if rows else ()


LABEL_COLUMNS = ["node_index", "author", "verdict", "note", "updated_at"]


@st.cache_data(max_entries=64, show_spinner=False)
def tree_labels(url: str, tree_id: int, stamp: tuple[Any, ...]) -> pd.DataFrame:
    """A tree's labels (``LABEL_COLUMNS``), by node then author."""
    columns = [Label.node_index, Label.author, Label.verdict, Label.note, Label.updated_at]
    statement = select(*columns).where(Label.tree_id == tree_id).order_by(Label.node_index, Label.author)
    return _frame(_rows(url, statement), LABEL_COLUMNS)


@st.cache_data(max_entries=16, show_spinner=False)
def label_table(
    url: str,
    stamp: tuple[Any, ...],
    run_ids: tuple[int, ...] | None,
    verdicts: tuple[str, ...] | None,
    authors: tuple[str, ...] | None,
) -> pd.DataFrame:
    """``store.labels.label_records`` (newest first) with the labelled node's
    critic scores and Q beside each label."""
    records = label_records(engine(url), run_ids=run_ids, verdicts=verdicts, authors=authors)
    table = pd.DataFrame(records, columns=list(LABEL_RECORD_KEYS))
    scores = [Node.tree_id, Node.index, *(getattr(Node, c) for c in SCORE_COLUMNS.values())]
    keys = sorted({(r["tree_id"], r["node_index"]) for r in records})
    found = pd.DataFrame(columns=["tree_id", "node_index", *SCORE_COLUMNS.values()])
    if keys:
        statement = select(*scores).where(Node.tree_id.in_(sorted({t for t, _ in keys})))
        found = pd.DataFrame(_rows(url, statement)).rename(columns={"index": "node_index"})
    return table.merge(found, on=["tree_id", "node_index"], how="left")


@st.cache_data(max_entries=16, show_spinner=False)
def label_authors(url: str, stamp: tuple[Any, ...]) -> list[str]:
    statement = select(Label.author).distinct().order_by(Label.author)
    return [row["author"] for row in _rows(url, statement)]


@st.cache_data(max_entries=16, show_spinner=False)
def human_verdicts(url: str, run_ids: tuple[int, ...], stamp: tuple[Any, ...]) -> pd.DataFrame:
    """The nodes of these runs with a human verdict (``store.labels.human_verdicts``):
    ``tree_id``, ``index``, ``human`` (1.0 correct, 0.0 incorrect), ``human_labels``."""
    from sqlmodel import Session

    with Session(engine(url)) as session:
        verdicts = store_human_verdicts(session, run_ids=run_ids)
    return pd.DataFrame(
        [
            {"tree_id": tree_id, "index": index, "human": float(correct), "human_labels": count}
            for (tree_id, index), (correct, count) in verdicts.items()
        ],
        columns=["tree_id", "index", "human", "human_labels"],
    )


def labels_jsonl(records: pd.DataFrame) -> str:
    """Label records as the JSONL lines ``canopy export --kind labels`` writes."""
    keep = (
        records[list(LABEL_RECORD_KEYS)].astype(object).where(records[list(LABEL_RECORD_KEYS)].notna(), None)
    )
    return "".join(jsonl_line(record) for record in keep.to_dict("records"))


# -- Rounds page: one held-out problem across an improve chain's rounds --------------


@st.cache_data(ttl=2, show_spinner=False)
def round_trees(url: str, run_ids: tuple[int, ...]) -> pd.DataFrame:
    """The trees of the given (held-out evaluation) runs with their problems:
    what the Rounds page lines up by ``problem_id`` across rounds. Refreshes every
    2 s, so a round still evaluating fills in."""
    statement = (
        select(
            Tree.id,
            Tree.run_id,
            Tree.problem_id,
            Tree.status,
            Tree.answer,
            Tree.correct,
            Tree.chosen_path,
            Tree.node_count,
            Tree.filtered_count,
            Tree.simulations_done,
            Tree.simulations_target,
            Tree.generated_tokens,
            Tree.seconds,
            Problem.index.label("problem_index"),
            Problem.question,
            Problem.answer.label("gold"),
        )
        .join(Problem, Problem.id == Tree.problem_id)
        .where(Tree.run_id.in_(list(run_ids)))
        .order_by(Tree.id)
    )
    return _frame(_rows(url, statement), [c.name for c in statement.selected_columns])
