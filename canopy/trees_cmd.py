"""``canopy trees``: list the stored trees, newest first."""

from __future__ import annotations

import argparse
import json

from canopy.common import add_db_flag


def add_trees_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``trees`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser("trees", help="List stored trees.")
    add_db_flag(parser)
    parser.add_argument("--run", type=int, help="Only this run's trees.")
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    return parser


def cmd_trees(args: argparse.Namespace) -> int:
    from store.db import make_engine
    from store.queries import list_trees

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
