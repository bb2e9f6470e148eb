"""People's verdicts on steps (``schema.Label``).

The studio writes them (node detail, the keyboard queue on the Critics page);
the Labels and Critics pages, the miner (``training.mine``: human labels win
over mined ones for the same node) and ``canopy export --kind labels`` read
them. A person has one label per node: labelling the node again replaces it.

A node's *human verdict* is the majority of its "correct" and "incorrect"
labels across people; "unsure" labels and ties give none.
"""

from __future__ import annotations

import getpass
import os
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from store.db import StoreError
from store.schema import LABEL_VERDICTS, Label, Node, Problem, Run, Tree, utcnow

MAX_AUTHOR = 80
MAX_NOTE = 2000

RECORD_KEYS = (
    "id",
    "run_id",
    "tree_id",
    "node_index",
    "verdict",
    "note",
    "author",
    "created_at",
    "updated_at",
    "task",
    "problem_index",
    "question",
    "gold",
    "steps",
)
"""The keys of a label record (``label_records``), in the order they are written:
the label, then what it is about (the problem and the steps from the root to the
labelled one, so an exported label stands on its own)."""


def default_author() -> str:
    """Who labels when nobody said: ``$CANOPY_USER``, else the login name."""
    try:
        name = os.environ.get("CANOPY_USER") or getpass.getuser()
    except (KeyError, OSError):  # no login name in some containers
        name = ""
    return name.strip()[:MAX_AUTHOR] or "anonymous"


def _checked(verdict: str, author: str, note: str) -> tuple[str, str, str]:
    if verdict not in LABEL_VERDICTS:
        raise StoreError(f"a label's verdict is one of {', '.join(LABEL_VERDICTS)}, got {verdict!r}")
    author = " ".join(str(author).split())
    if not author:
        raise StoreError("a label needs an author: say who you are")
    if len(author) > MAX_AUTHOR:
        raise StoreError(f"an author name has at most {MAX_AUTHOR} characters")
    note = str(note).strip()
    if len(note) > MAX_NOTE:
        raise StoreError(f"a note has at most {MAX_NOTE} characters, this one has {len(note)}")
    return verdict, author, note


def _labelled_node(session: Session, tree_id: int, node_index: int) -> Tree:
    """The node's tree, after checking that the tree, its run and the node exist."""
    tree = session.get(Tree, tree_id)
    if tree is None:
        raise StoreError(f"tree {tree_id} is not in the database (deleted?); the label was not saved")
    if session.get(Run, tree.run_id) is None:
        raise StoreError(
            f"the run of tree {tree_id} is not in the database (deleted?); the label was not saved"
        )
    found = session.exec(select(Node.id).where(Node.tree_id == tree_id, Node.index == node_index)).first()
    if found is None:
        raise StoreError(f"tree {tree_id} has no node {node_index}; the label was not saved")
    return tree


def put_label(
    engine: Engine, *, tree_id: int, node_index: int, verdict: str, author: str, note: str = ""
) -> None:
    """Store ``author``'s verdict on a node, replacing their earlier one.

    One transaction, an upsert on (tree, node, author): two studios labelling
    at once, or a search writing the same database, cannot make two labels of
    one person on one node.

    Raises:
        StoreError: a bad verdict, author or note, or a tree, run or node that
            is not (or no longer) in the database.
    """
    verdict, author, note = _checked(verdict, author, note)
    insert = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}.get(engine.dialect.name)
    if insert is None:
        raise StoreError(f"labels need SQLite or PostgreSQL, not {engine.dialect.name}")
    now = utcnow()
    with Session(engine) as session:
        tree = _labelled_node(session, tree_id, node_index)
        values = {
            "run_id": tree.run_id,
            "tree_id": tree_id,
            "node_index": node_index,
            "verdict": verdict,
            "note": note,
            "author": author,
            "created_at": now,
            "updated_at": now,
        }
        statement = insert(Label).values(**values)
        statement = statement.on_conflict_do_update(
            index_elements=["tree_id", "node_index", "author"],
            set_={"verdict": verdict, "note": note, "updated_at": now},
        )
        session.exec(statement)
        session.commit()


def remove_label(engine: Engine, *, tree_id: int, node_index: int, author: str) -> bool:
    """Delete ``author``'s label on a node; False if there was none."""
    with Session(engine) as session:
        label = session.exec(
            select(Label).where(
                Label.tree_id == tree_id,
                Label.node_index == node_index,
                Label.author == " ".join(str(author).split()),  # as put_label stored it
            )
        ).first()
        if label is None:
            return False
        session.delete(label)
        session.commit()
    return True


def tree_labels(engine: Engine, tree_id: int) -> list[Label]:
    """A tree's labels, by node then author."""
    with Session(engine) as session:
        query = select(Label).where(Label.tree_id == tree_id).order_by(Label.node_index, Label.author)
        return list(session.exec(query).all())


def majority(verdicts: Iterable[str]) -> bool | None:
    """The human verdict of one node's labels: True (correct), False
    (incorrect), or None for no "correct"/"incorrect" label or a tie."""
    counts = Counter(verdict for verdict in verdicts if verdict in ("correct", "incorrect"))
    if counts["correct"] == counts["incorrect"]:
        return None
    return counts["correct"] > counts["incorrect"]


def human_verdicts(
    session: Session, *, run_ids: Sequence[int] | None = None
) -> dict[tuple[int, int], tuple[bool, int]]:
    """(tree id, node index) -> (the node's human verdict, how many "correct" or
    "incorrect" labels it rests on), for every node that has one (of the given
    runs, or of all)."""
    query = select(Label.tree_id, Label.node_index, Label.verdict)
    if run_ids is not None:
        query = query.where(col(Label.run_id).in_(list(run_ids)))
    grouped: dict[tuple[int, int], list[str]] = defaultdict(list)
    for tree_id, node_index, verdict in session.exec(query).all():
        grouped[(tree_id, node_index)].append(verdict)
    found = {}
    for key, verdicts in grouped.items():
        verdict = majority(verdicts)
        if verdict is not None:
            found[key] = (verdict, sum(v in ("correct", "incorrect") for v in verdicts))
    return found


def label_records(
    engine: Engine,
    *,
    run_ids: Sequence[int] | None = None,
    verdicts: Sequence[str] | None = None,
    authors: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Labels with what they are about (``RECORD_KEYS``), newest first; each
    filter, when given, keeps the labels that match any of its values."""
    query = (
        select(Label, Tree, Problem)
        .join(Tree, Label.tree_id == Tree.id)
        .join(Problem, Tree.problem_id == Problem.id)
        .order_by(col(Label.updated_at).desc(), col(Label.id).desc())
    )
    if run_ids is not None:
        query = query.where(col(Label.run_id).in_(list(run_ids)))
    if verdicts is not None:
        query = query.where(col(Label.verdict).in_(list(verdicts)))
    if authors is not None:
        query = query.where(col(Label.author).in_(list(authors)))
    with Session(engine) as session:
        rows = session.exec(query).all()
        steps = _steps(session, {(label.tree_id, label.node_index) for label, _, _ in rows})
    return [
        {
            "id": label.id,
            "run_id": label.run_id,
            "tree_id": label.tree_id,
            "node_index": label.node_index,
            "verdict": label.verdict,
            "note": label.note,
            "author": label.author,
            "created_at": label.created_at.isoformat(),
            "updated_at": label.updated_at.isoformat(),
            "task": problem.task,
            "problem_index": problem.index,
            "question": problem.question,
            "gold": problem.answer,
            "steps": steps.get((label.tree_id, label.node_index), []),
        }
        for label, _tree, problem in rows
    ]


def _steps(session: Session, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], list[str]]:
    """(tree id, node index) -> the option texts from the root (excluded) to that
    node, for the ``wanted`` nodes only (their trees' rows are read once)."""
    if not wanted:
        return {}
    rows = session.exec(
        select(Node.tree_id, Node.index, Node.parent_index, Node.option_text).where(
            col(Node.tree_id).in_(sorted({tree_id for tree_id, _ in wanted}))
        )
    ).all()
    nodes = {(tree_id, index): (parent, text) for tree_id, index, parent, text in rows}
    paths = {}
    for tree_id, index in wanted:
        texts, current, seen = [], index, set()
        while (tree_id, current) in nodes and current not in seen and nodes[(tree_id, current)][0] >= 0:
            seen.add(current)
            parent, text = nodes[(tree_id, current)]
            texts.append(text)
            current = parent
        paths[(tree_id, index)] = texts[::-1]
    return paths
