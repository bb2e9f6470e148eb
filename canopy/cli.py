"""The ``canopy`` command: assembles the subcommands and runs one.

Every bad input ends in one line on stderr (``canopy: error: ...``) and exit
status 2, before anything is written to the database; a command line argparse
cannot read gets its error and a pointer to ``--help`` instead of the whole usage.
"""

from __future__ import annotations

import argparse
import signal
import sys

from canopy.app_cmd import add_app_parser, cmd_app
from canopy.common import Interrupted
from canopy.credit_cmd import add_credit_parser, cmd_credit
from canopy.db_cmd import add_db_parser, cmd_db
from canopy.errors import CanopyError
from canopy.eval_cmd import add_eval_parser, cmd_eval
from canopy.export_cmd import add_export_parser, cmd_export
from canopy.improve_cmd import add_improve_parser, cmd_improve
from canopy.models_cmd import add_models_parser, cmd_models
from canopy.search_cmd import add_search_parser, cmd_search
from canopy.trees_cmd import add_trees_parser, cmd_trees

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

COMMANDS = {
    "search": (add_search_parser, cmd_search),
    "trees": (add_trees_parser, cmd_trees),
    "credit": (add_credit_parser, cmd_credit),
    "models": (add_models_parser, cmd_models),
    "eval": (add_eval_parser, cmd_eval),
    "export": (add_export_parser, cmd_export),
    "improve": (add_improve_parser, cmd_improve),
    "app": (add_app_parser, cmd_app),
    "db": (add_db_parser, cmd_db),
}


class _Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are two lines: what is wrong, and where help is."""

    def error(self, message: str):  # noqa: ANN201 (argparse's signature)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\nsee `{self.prog} --help` for the options\n")


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="canopy", description="Option-level MCTS decoding with critics, stored for inspection."
    )
    subcommands = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in COMMANDS.values():
        add_parser(subcommands)
    return parser


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    _, run = COMMANDS[args.command]
    try:
        return run(args)
    except CanopyError as exc:
        print(f"canopy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Interrupted as stop:
        print(f"canopy: interrupted{f'; {stop.hint}' if stop.hint else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("canopy: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
