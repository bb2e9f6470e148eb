"""Mined training examples as they leave the store: the one record format that
``canopy export`` writes and the app's Data page downloads.

A record is one ``TrainingExample`` row, flat: its payload's keys (which depend
on the kind; ``training.mine`` documents them) and then ``PROVENANCE_KEYS``:
the row's ``id``, its ``kind``, the ``iteration_id`` it was mined for (None for
none), the ``source_tree_id`` it came from and the tree-local ``source_nodes``
it used. Flat so that a Hugging Face dataset made from the records has one
column per field; payloads never use the provenance names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from store.schema import TrainingExample

PROVENANCE_KEYS = ("id", "kind", "iteration_id", "source_tree_id", "source_nodes")
"""The keys every record has besides its payload's, in the order they are written."""


def export_record(example: TrainingExample) -> dict[str, Any]:
    """``example`` as an export record: its payload, then ``PROVENANCE_KEYS``."""
    return {
        **example.payload,
        "id": example.id,
        "kind": example.kind,
        "iteration_id": example.iteration_id,
        "source_tree_id": example.source_tree_id,
        "source_nodes": list(example.source_nodes),
    }


def examples_query(
    *, kinds: Sequence[str] = (), iteration_ids: Sequence[int | None] = ()
) -> SelectOfScalar[TrainingExample]:
    """The examples of any of ``kinds`` mined for any of ``iteration_ids`` (None
    stands for "no iteration"), in id order; an empty sequence means all."""
    query = select(TrainingExample).order_by(col(TrainingExample.id))
    if kinds:
        query = query.where(col(TrainingExample.kind).in_(kinds))
    if iteration_ids:
        known = [i for i in iteration_ids if i is not None]
        condition = col(TrainingExample.iteration_id).in_(known)
        if None in iteration_ids:
            condition = condition | col(TrainingExample.iteration_id).is_(None)
        query = query.where(condition)
    return query


def export_records(
    engine: Engine, *, kinds: Sequence[str] = (), iteration_ids: Sequence[int | None] = ()
) -> list[dict[str, Any]]:
    """The chosen examples as export records (see ``examples_query``), in id order."""
    query = examples_query(kinds=kinds, iteration_ids=iteration_ids)
    with Session(engine) as session:
        return [export_record(example) for example in session.exec(query)]


def jsonl_line(record: dict[str, Any]) -> str:
    """One record as a line of JSONL: UTF-8 text kept as it is, newline-terminated."""
    return json.dumps(record, ensure_ascii=False) + "\n"
