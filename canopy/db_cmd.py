"""``canopy db``: the store's schema revision, and upgrading a store in place."""

from __future__ import annotations

import argparse

from canopy.common import add_db_flag


def add_db_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``db`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser("db", help="Show the store's schema revision, or upgrade it in place.")
    commands = parser.add_subparsers(dest="db_command", required=True)
    for name, text in (
        ("status", "The store's schema revision and the one this Canopy needs."),
        ("upgrade", "Migrate the store to this Canopy's schema, keeping every run and tree."),
    ):
        add_db_flag(commands.add_parser(name, help=text))
    return parser


def cmd_db(args: argparse.Namespace) -> int:
    from store.db import HEAD_REVISION, make_engine, schema_revision, upgrade

    engine = make_engine(args.db, create=False, check=False)
    try:
        if args.db_command == "status":
            revision = schema_revision(engine)
            state = "up to date" if revision == HEAD_REVISION else "run `canopy db upgrade`"
            print(f"schema revision {revision or 'none'}; this Canopy needs {HEAD_REVISION} ({state})")
            return 0
        before, after = upgrade(engine)
        print(
            f"already at schema revision {after}" if before == after else f"upgraded from {before} to {after}"
        )
        return 0
    finally:
        engine.dispose()
