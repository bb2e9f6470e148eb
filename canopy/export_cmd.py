"""``canopy export``: write mined training examples of one kind, or people's
step labels (``--kind labels``, records of ``store.labels.label_records``), to a file.

Both formats hold the records of ``store.examples``: each example's payload
plus ``id``, ``kind``, ``iteration_id``, ``source_tree_id`` and
``source_nodes``, the same lines the app's Data page downloads. ``jsonl``
writes one record per line; ``hf`` saves them as a Hugging Face
``datasets.Dataset`` folder (``load_from_disk`` reads it back). Bad input
raises the project's error types with one-line messages; ``canopy.cli.main``
prints them. The store is imported inside ``cmd_export``, so that building the
parser (every ``canopy`` start) does not load SQLAlchemy.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from canopy.errors import UsageError
from store.example_kinds import EXAMPLE_KINDS

FORMATS = ("jsonl", "hf")
LABELS = "labels"
"""The ``--kind`` that exports people's step labels instead of mined examples."""


def add_export_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser(
        "export", help="Write mined training examples, or people's step labels, to JSONL or a HF dataset."
    )
    parser.add_argument(
        "--kind",
        required=True,
        choices=[*EXAMPLE_KINDS, LABELS],
        help="Which examples, or `labels`: the steps people labelled in the studio.",
    )
    parser.add_argument(
        "--format", default="jsonl", choices=FORMATS, help="jsonl file or hf dataset folder (default: jsonl)."
    )
    parser.add_argument("--iteration", type=int, metavar="ID", help="Only this iteration's examples.")
    parser.add_argument(
        "--db", help="Database URL or SQLite path (default: $CANOPY_DB or ~/.local/share/canopy)."
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="File (jsonl) or new folder (hf).")
    return parser


def _check_out(out: Path, fmt: str) -> None:
    if fmt == "jsonl" and out.is_dir():
        raise UsageError(f"--out {out} is a folder; jsonl needs a file path")
    if fmt == "hf":
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file; hf needs a new or empty folder")
        if out.is_dir() and any(out.iterdir()):
            raise UsageError(f"--out {out} is a folder that is not empty; pick a new one")


def _write_jsonl(records: list[dict[str, Any]], out: Path) -> None:
    from store.examples import jsonl_line

    partial = out.with_name(out.name + ".partial")
    with partial.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(jsonl_line(record))
    os.replace(partial, out)


def _write_hf(records: list[dict[str, Any]], out: Path) -> None:
    from datasets import Dataset

    Dataset.from_list(records).save_to_disk(str(out))


def cmd_export(args: argparse.Namespace) -> int:
    from sqlmodel import Session

    from store import schema
    from store.db import make_engine
    from store.examples import export_records

    out = Path(args.out).expanduser()
    _check_out(out, args.format)
    if args.kind == LABELS and args.iteration is not None:
        raise UsageError("labels belong to no iteration; drop --iteration with --kind labels")
    engine = make_engine(args.db, create=False)
    if args.kind == LABELS:
        from store.labels import label_records

        records = label_records(engine)
        if not records:
            raise UsageError("no labels in the database; label steps in the studio's node detail first")
        _write(records, out, args.format)
        print(f"wrote {len(records)} label{'s' if len(records) != 1 else ''} to {out}")
        return 0
    if args.iteration is not None:
        with Session(engine) as session:
            if session.get(schema.Iteration, args.iteration) is None:
                raise UsageError(f"no iteration {args.iteration} in the database")
    iteration_ids = [] if args.iteration is None else [args.iteration]
    records = export_records(engine, kinds=[args.kind], iteration_ids=iteration_ids)
    if not records:
        where = "" if args.iteration is None else f" of iteration {args.iteration}"
        raise UsageError(f"no {args.kind} examples{where} in the database; mine some trees first")
    _write(records, out, args.format)
    print(f"wrote {len(records)} {args.kind} examples to {out}")
    return 0


def _write(records: list[dict[str, Any]], out: Path, fmt: str) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        (_write_jsonl if fmt == "jsonl" else _write_hf)(records, out)
    except OSError as exc:
        raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
