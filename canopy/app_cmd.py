"""``canopy app``: the Streamlit studio, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse

from canopy.common import add_db_flag


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port (1 to 65535)")
    return port


def add_app_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``app`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser("app", help="Start the Streamlit app (binds 127.0.0.1).")
    add_db_flag(parser)
    parser.add_argument(
        "--port", type=_port, default=8501, help="Port to serve on, 1 to 65535 (default: 8501)."
    )
    parser.add_argument(
        "--address", default="127.0.0.1", help="Interface to bind; 127.0.0.1 keeps it private."
    )
    return parser


def cmd_app(args: argparse.Namespace) -> int:
    from app.launch import launch
    from store.db import default_db_url, normalize_url

    return launch(
        normalize_url(args.db) if args.db else default_db_url(), port=args.port, address=args.address
    )
