"""``canopy trees``: list the stored trees, newest first, or export one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from canopy.common import add_db_flag
from canopy.errors import UsageError

EXPORT_FORMATS = ("json", "svg", "png")
COLOR_BY = ("combined", "value", "prm", "orm", "tool", "q")


def add_trees_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``trees`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser("trees", help="List stored trees, or export one.")
    add_db_flag(parser)
    parser.add_argument("--run", type=int, help="Only this run's trees.")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--export",
        type=int,
        metavar="TREE_ID",
        help="Write this tree as JSON (nodes, edges, scores) or as an SVG/PNG figure.",
    )
    parser.add_argument(
        "--format", choices=EXPORT_FORMATS, default="json", help="With --export: json, svg or png."
    )
    parser.add_argument(
        "--color-by", choices=COLOR_BY, default="combined", help="With --export: node colours."
    )
    parser.add_argument("--out", help="With --export: the file to write (default: stdout for json).")
    return parser


def cmd_trees(args: argparse.Namespace) -> int:
    from store.db import make_engine
    from store.queries import list_trees

    if args.export is not None:
        return _export(args, make_engine(args.db, create=False))
    rows = list_trees(make_engine(args.db, create=False), run_id=args.run, limit=args.limit)
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    if not rows:
        print("no trees stored yet; run `canopy search`")
        return 0
    print(
        f"{'tree':>5} {'run':>4} {'status':<11} {'model':<20} {'task':<10} {'nodes':>5} {'sims':>5}"
        " answer/gold"
    )
    for row in rows:
        mark = {True: "ok", False: "wrong", None: ""}[row["correct"]]
        print(
            f"{row['tree_id']:>5} {row['run_id']:>4} {row['status']:<11} {row['model'][:20]:<20} "
            f"{row['task']:<10} {row['nodes']:>5} {row['simulations']:>5} "
            f"{row['answer']}/{row['gold']} {mark}"
        )
    return 0


def _export(args: argparse.Namespace, engine) -> int:
    from store.tree_export import tree_document

    document = tree_document(engine, args.export)
    if args.format == "json":
        text = json.dumps(document, indent=1)
        if args.out:
            Path(args.out).write_text(text + "\n")
        else:
            print(text)
        return 0
    if not args.out:
        raise UsageError(f"--format {args.format} writes a file: pass --out PATH")
    from app.layout import document_figure

    figure = document_figure(document, color_by=args.color_by)
    try:
        image = figure.to_image(format=args.format)
    except Exception as exc:  # noqa: BLE001 - any exporter failure is one line naming the fix
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise UsageError(f"the {args.format} export needs kaleido and a Chrome/Chromium ({reason})") from None
    Path(args.out).write_bytes(image)
    print(f"tree {args.export}: wrote {args.out}")
    return 0
