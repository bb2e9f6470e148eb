"""``canopy improve``: the self-improvement loop (see ``training/improve.py``).

Flags are built from the settings dataclasses: the search's own flags
(``--simulations``, ``--c``, ...), then one group per section with the
section's name in front (``--sft-learning-rate``, ``--mine-use-gold``, ...).
A ``--config`` TOML/JSON file may hold the same settings: top-level keys and
sections ``[search]``, ``[mine]``, ``[sft]``, ``[dpo]``, ``[value]``, ``[prm]``,
``[orm]``; flags override it. An interrupted loop continues with
``--resume ITERATION_ID``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from canopy.common import (
    DEFAULT_MODEL,
    TASKS,
    Interrupted,
    add_db_flag,
    add_search_settings,
    add_settings_flags,
    add_worker_flags,
    fans_out,
)

# Section name on the command line and in --config -> ImproveConfig field.
SECTIONS = {"mine": "mine", "sft": "sft", "dpo": "dpo_train", "value": "value", "prm": "prm", "orm": "orm"}


def _default(spec) -> Any:
    return spec.default if spec.default is not MISSING else spec.default_factory()


def add_improve_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``improve`` subcommand to ``subcommands`` (argparse's subparsers)."""
    from training.improve_config import LOOP_BACKENDS, ImproveConfig

    parser = subcommands.add_parser(
        "improve",
        help="Self-improvement: search train problems, mine the trees, train policy and critics, evaluate.",
    )
    parser.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help=f"Starting policy: preset, HF dir or .gguf (default: {DEFAULT_MODEL}).",
    )
    parser.add_argument("--resume", type=int, metavar="ITERATION_ID", help="Continue an interrupted loop.")
    parser.add_argument("--config", help="TOML or JSON file of settings (sections as in --help).")
    add_db_flag(parser)
    add_worker_flags(parser, what="the search's and evaluations' problems")
    parser.add_argument("--json", action="store_true", help="Print the iterations as one JSON object.")
    top = parser.add_argument_group("loop settings")
    for spec in fields(ImproveConfig):
        if spec.name == "model" or spec.name in SECTIONS.values() or spec.name == "search":
            continue
        default = _default(spec)
        kwargs: dict[str, Any] = {"dest": spec.name, "default": argparse.SUPPRESS}
        if isinstance(default, bool):
            kwargs["action"] = "store_true"
        elif isinstance(default, int):
            kwargs["type"] = int
        if spec.name == "task":
            kwargs["choices"] = TASKS
        if spec.name == "backend":
            kwargs["choices"] = LOOP_BACKENDS
        shown = default if default not in ("", None) else "none"
        if spec.name == "checkpoints":
            shown = "<canopy cache>/checkpoints"
        kwargs["help"] = f"{spec.metadata['help']} (default: {shown})"
        top.add_argument("--" + spec.name.replace("_", "-"), **kwargs)
    # The loop trains its own critics: no --value-checkpoint etc. here.
    add_search_settings(parser, critic_models=False)
    defaults = ImproveConfig(model="x", checkpoints="x")
    for section, name in SECTIONS.items():
        group = parser.add_argument_group(f"{section} settings")
        add_settings_flags(group, type(getattr(defaults, name)), section=section)
    return parser


def improve_config(args: argparse.Namespace):
    """The ``ImproveConfig`` that --config and the flags describe."""
    from engine.config import SearchConfig, read_settings_file
    from engine.models import cache_dir
    from training.improve_config import ImproveConfig

    settings: dict[str, Any] = read_settings_file(args.config) if args.config else {}
    settings = {SECTIONS.get(key, key): value for key, value in settings.items()}
    for key in ("search", *SECTIONS.values()):
        settings[key] = dict(settings.get(key) or {})
    flags = vars(args)
    settings["search"].update({f.name: flags[f.name] for f in fields(SearchConfig) if f.name in flags})
    for section, name in SECTIONS.items():
        prefix = f"{section}."
        settings[name].update(
            {key[len(prefix) :]: value for key, value in flags.items() if key.startswith(prefix)}
        )
    for spec in fields(ImproveConfig):
        if spec.name in flags and spec.name not in settings["search"]:
            settings[spec.name] = flags[spec.name]
    settings.setdefault("model", DEFAULT_MODEL)
    if not settings.get("checkpoints"):
        settings["checkpoints"] = str(cache_dir() / "checkpoints")
    if settings.get("data"):
        settings["data"] = str(Path(settings["data"]).resolve())
    return ImproveConfig.from_dict(settings)


def cmd_improve(args: argparse.Namespace) -> int:
    from store.db import make_engine
    from training.improve import improve, summary

    config = improve_config(args) if args.resume is None else None
    if fans_out(args):
        from engine.fanout import connect

        # Once for the whole loop (each stage's workers join it), and before the
        # store is touched: an unreachable cluster writes nothing.
        connect(workers=args.workers, address=args.ray_address)
    engine = make_engine(args.db)
    workers = {"workers": args.workers, "ray_address": args.ray_address}
    try:
        if config is None:
            ids = improve(engine, resume=args.resume, **workers)
        else:
            ids = improve(engine, config, **workers)
    except KeyboardInterrupt:
        raise Interrupted(None) from None  # the loop has said which iteration to resume
    rows = summary(engine, ids)
    if args.json:
        print(json.dumps({"iterations": rows}, indent=2, default=str))
    else:
        for row in rows:
            accuracy = row["accuracy"]
            print(
                f"iteration {row['id']} ({row['name']}): greedy {accuracy.get('greedy')}, "
                f"mcts {accuracy.get('mcts')}; checkpoint {row['checkpoint']}",
                file=sys.stdout,
            )
    return 0
