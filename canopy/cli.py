"""The ``canopy`` command: search, trees, models, app.

Every bad input ends in one line on stderr (``canopy: error: ...``) and exit
status 2, before anything is written to the database.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from dataclasses import MISSING, fields
from typing import Any

from canopy.eval_cmd import add_eval_parser, cmd_eval
from canopy.export_cmd import add_export_parser, cmd_export
from canopy.improve_cmd import add_improve_parser, cmd_improve
from engine.config import (
    ANSWER_SELECTIONS,
    SELECTIONS,
    SIMILARITY_MEASURES,
    TERMINATIONS,
    ConfigError,
    SearchConfig,
)
from engine.policies import BACKENDS

DEFAULT_MODEL = "qwen2.5-coder-0.5b"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_CHOICES = {
    "selection": SELECTIONS,
    "similarity": SIMILARITY_MEASURES,
    "termination": TERMINATIONS,
    "answer_selection": ANSWER_SELECTIONS,
}


class UsageError(Exception):
    """Bad input found by the CLI itself."""


def _add_search_settings(parser: argparse.ArgumentParser) -> None:
    """One flag per ``SearchConfig`` field, built from the field's type and help."""
    group = parser.add_argument_group("search settings (override --config)")
    add_settings_flags(group, SearchConfig, _CHOICES)


def add_settings_flags(
    group, settings_class: type, choices: dict[str, tuple[str, ...]] | None = None, *, section: str = ""
) -> None:
    """One flag per field of a settings dataclass, typed by its default and
    helped by its ``metadata["help"]``; unset flags stay out of the namespace.
    With ``section``, flags read ``--<section>-<field>`` and land in ``<section>.<field>``."""
    for field in fields(settings_class):
        flag = "--" + (f"{section}-" if section else "") + field.name.replace("_", "-")
        default = field.default if field.default is not MISSING else field.default_factory()
        kwargs: dict[str, Any] = {
            "dest": f"{section}.{field.name}" if section else field.name,
            "default": argparse.SUPPRESS,
            "help": f"{field.metadata.get('help', '')} (default: {default})",
        }
        if section:
            kwargs["metavar"] = field.name.upper()
        if choices and field.name in choices:
            kwargs["choices"] = choices[field.name]
        if isinstance(default, tuple | list):
            kwargs["nargs"] = "+"
        elif isinstance(default, bool):
            kwargs["type"] = lambda text: text.lower() in ("1", "true", "yes")
        elif isinstance(default, int | float):
            kwargs["type"] = type(default)
        group.add_argument(flag, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="canopy", description="Option-level MCTS decoding with critics, stored for inspection."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    search = commands.add_parser("search", help="Search one problem and store the tree.")
    search.add_argument("--model", default=DEFAULT_MODEL, help="Preset, local HF dir, .gguf file or hub id.")
    search.add_argument("--rollout-model", help="Smaller/faster model for rollouts (default: --model).")
    search.add_argument("--backend", default="hf", choices=BACKENDS, help="Inference backend (default: hf).")
    search.add_argument("--base-url", help="Completions server of the openai backend.")
    search.add_argument("--task", default="arithmetic", choices=("arithmetic", "gsm8k"))
    search.add_argument("--data", help="GSM8K-format JSONL file (task gsm8k).")
    search.add_argument("--split", default="test", choices=("train", "test"), help="Arithmetic split.")
    search.add_argument("--steps", type=int, default=2, help="Arithmetic difficulty: operations per problem.")
    search.add_argument("--max-number", type=int, default=20, help="Arithmetic difficulty: largest operand.")
    which = search.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, help="Problem index in the task's split.")
    which.add_argument("--question", help="Type a question instead of picking one.")
    search.add_argument("--answer", help="Gold answer of --question, to score the result.")
    search.add_argument("--resume", type=int, metavar="RUN_ID", help="Continue an interrupted run.")
    search.add_argument("--config", help="TOML or JSON file of search settings.")
    search.add_argument(
        "--db", help="Database URL or SQLite path (default: $CANOPY_DB or ~/.local/share/canopy)."
    )
    search.add_argument("--json", action="store_true", help="Print one JSON object with the result.")
    _add_search_settings(search)

    trees = commands.add_parser("trees", help="List stored trees.")
    trees.add_argument("--db", help="Database URL or SQLite path.")
    trees.add_argument("--run", type=int, help="Only this run's trees.")
    trees.add_argument("--limit", type=int, default=50)
    trees.add_argument("--json", action="store_true")

    models = commands.add_parser("models", help="List model presets, or prepare one.")
    models_commands = models.add_subparsers(dest="models_command")
    models_commands.add_parser("list", help="Presets and whether they are installed and prepared.")
    prepare = models_commands.add_parser("prepare", help="Assemble/convert a preset into the cache.")
    prepare.add_argument("name")
    models.add_argument("--json", action="store_true")

    add_eval_parser(commands)
    add_export_parser(commands)
    add_improve_parser(commands)

    app = commands.add_parser("app", help="Start the Streamlit app (binds 127.0.0.1).")
    app.add_argument("--db", help="Database URL or SQLite path.")
    app.add_argument("--port", type=int, default=8501)
    app.add_argument("--address", default="127.0.0.1", help="Interface to bind; 127.0.0.1 keeps it private.")
    return parser


# -- search -------------------------------------------------------------------


def _search_config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> SearchConfig:
    from engine.config import load_config_file

    settings = dict(base or {})
    if args.config:
        settings.update(load_config_file(args.config))
    settings.update({f.name: getattr(args, f.name) for f in fields(SearchConfig) if hasattr(args, f.name)})
    return SearchConfig.from_dict(settings)


def _problem(args: argparse.Namespace):
    from engine.tasks import get_problem
    from engine.types import Problem

    if args.question is not None:
        if not args.question.strip():
            raise UsageError("--question is empty")
        gold = None
        if args.answer is not None:
            from engine.answers import normalize_number

            gold = normalize_number(args.answer)
            if gold is None:
                raise UsageError(f"--answer {args.answer!r} is not a number")
        return Problem(question=args.question.strip(), answer=gold, task="custom")
    if args.answer is not None:
        raise UsageError("--answer goes with --question")
    if args.index is None:
        raise UsageError("pick a problem with --index I, or type one with --question TEXT")
    return get_problem(
        args.task, args.index, data=args.data, split=args.split, steps=args.steps, max_number=args.max_number
    )


class _Progress:
    """A tqdm bar on stderr over simulations."""

    def __init__(self, total: int, done: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=done, unit="sim", file=sys.stderr, dynamic_ncols=True)

    def __call__(self, tree) -> None:
        self.bar.update(tree.simulations_done - self.bar.n)
        self.bar.set_postfix(nodes=len(tree.nodes), filtered=len(tree.filtered), tokens=tree.generated_tokens)

    def close(self) -> None:
        self.bar.close()


def cmd_search(args: argparse.Namespace) -> int:
    from engine.api import build_components, resume_search, run_to_resume, search_problem
    from engine.models import resolve_model
    from engine.policies import load_policy
    from store.db import make_engine

    if args.resume is not None:
        engine = make_engine(args.db)
        run, tree_row = run_to_resume(engine, args.resume)
        config = _search_config(args, base=run.config)
        model, rollout_model = run.model, run.rollout_model
    else:
        config = _search_config(args)
        problem = _problem(args)
        model, rollout_model = args.model, args.rollout_model
        for name in filter(None, (model, rollout_model)):
            resolve_model(name)
        engine = make_engine(args.db)
    _log(f"loading {model} ...")
    policy = load_policy(model, backend=args.backend, base_url=args.base_url)
    rollout_policy = None
    if rollout_model and rollout_model != model:
        rollout_policy = load_policy(rollout_model, backend=args.backend, base_url=args.base_url)
    components = build_components(
        config, model=model, rollout_model=rollout_model, policy=policy, rollout_policy=rollout_policy
    )
    done = tree_row.simulations_done if args.resume is not None else 0
    progress = _Progress(config.simulations, done)
    try:
        if args.resume is not None:
            result = resume_search(
                engine, args.resume, components=components, config=config, on_simulation=progress
            )
        else:
            result = search_problem(
                engine,
                problem,
                model=model,
                config=config,
                components=components,
                on_run_created=lambda run_id: _log(f"run {run_id} started"),
                on_simulation=progress,
            )
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        verdict = {True: "correct", False: "wrong", None: "no gold answer"}[result.correct]
        print(
            f"run {result.run_id} tree {result.tree_id}: answer {result.answer} ({verdict}"
            f"{'' if result.gold is None else f', gold {result.gold}'}); {result.nodes} nodes, "
            f"{result.filtered} filtered, {result.simulations} simulations, "
            f"{result.generated_tokens} tokens in {result.seconds:.1f} s"
        )
    return 0


def _log(message: str) -> None:
    print(f"canopy: {message}", file=sys.stderr)


# -- trees, models, app -------------------------------------------------------


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


def cmd_app(args: argparse.Namespace) -> int:
    from app.launch import launch
    from store.db import default_db_url, normalize_url

    return launch(
        normalize_url(args.db) if args.db else default_db_url(), port=args.port, address=args.address
    )


def _raise_interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    from engine.api import RunNotResumable
    from engine.critics import ValueCheckpointError
    from engine.models import ModelError
    from engine.policies import BackendError
    from engine.tasks import TaskError
    from store.db import StoreError

    handlers = {
        "search": cmd_search,
        "eval": cmd_eval,
        "export": cmd_export,
        "improve": cmd_improve,
        "trees": cmd_trees,
        "models": cmd_models,
        "app": cmd_app,
    }
    try:
        return handlers[args.command](args)
    except (
        UsageError,
        ConfigError,
        TaskError,
        StoreError,
        ModelError,
        BackendError,
        RunNotResumable,
        ValueCheckpointError,
    ) as exc:
        print(f"canopy: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        what = "ITERATION_ID" if args.command == "improve" else "RUN_ID"
        print(f"canopy: interrupted; resume with `canopy {args.command} --resume {what}`", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
