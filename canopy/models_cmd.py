"""``canopy models``: the offline model presets, and preparing one."""

from __future__ import annotations

import argparse
import json


def add_models_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``models`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser("models", help="List model presets, or prepare one.")
    commands = parser.add_subparsers(dest="models_command")
    commands.add_parser("list", help="Presets and whether they are installed and prepared.")
    prepare = commands.add_parser("prepare", help="Assemble/convert a preset into the cache.")
    prepare.add_argument("name")
    parser.add_argument("--json", action="store_true")
    return parser


def cmd_models(args: argparse.Namespace) -> int:
    from engine.models import prepare_preset, preset_status

    if args.models_command == "prepare":
        path = prepare_preset(args.name)
        print(f"{args.name}: ready at {path}")
        return 0
    rows = preset_status()
    if args.json:
        print(json.dumps(rows, default=str))
        return 0
    for row in rows:
        state = "prepared" if row["prepared"] else ("installed" if row["installed"] else "not installed")
        print(f"{row['name']:<22} {row['role']:<10} {state:<14} {row['description']}")
    return 0
