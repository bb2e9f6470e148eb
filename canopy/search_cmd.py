"""``canopy search``: grow one tree over one problem and store it; ``--resume``
continues an interrupted run from its last committed simulation."""

from __future__ import annotations

import argparse
import json
import sys

from canopy.common import (
    Interrupted,
    add_db_flag,
    add_model_flags,
    add_search_settings,
    add_task_flags,
    check_models,
    load_components,
    log,
    resume_hint,
    search_settings,
)
from canopy.errors import UsageError


def add_search_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``search`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser("search", help="Search one problem and store the tree.")
    add_model_flags(parser)
    add_task_flags(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, help="Problem index in the task's split.")
    which.add_argument("--question", help="Type a question instead of picking one.")
    parser.add_argument("--answer", help="Gold answer of --question, to score the result.")
    parser.add_argument("--resume", type=int, metavar="RUN_ID", help="Continue an interrupted run.")
    parser.add_argument("--config", help="TOML or JSON file of search settings.")
    add_db_flag(parser)
    parser.add_argument("--json", action="store_true", help="Print one JSON object with the result.")
    add_search_settings(parser)
    return parser


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
    from engine.api import resume_search, run_to_resume, search_problem, stored_critic_models
    from store.db import make_engine

    run_ids: list[int] = []
    if args.resume is not None:
        engine = make_engine(args.db)
        run, tree_row = run_to_resume(engine, args.resume)
        config, critic_models = search_settings(args, base=run.config, base_models=stored_critic_models(run))
        model, rollout_model, done = run.model, run.rollout_model, tree_row.simulations_done
        run_ids.append(args.resume)
    else:
        config, critic_models = search_settings(args)
        problem = _problem(args)
        model, rollout_model, done = args.model, args.rollout_model, 0
        check_models(model, rollout_model)
        engine = make_engine(args.db)
    components = load_components(
        config,
        critic_models,
        model=model,
        rollout_model=rollout_model,
        backend=args.backend,
        base_url=args.base_url,
    )

    def started(run_id: int) -> None:
        run_ids.append(run_id)
        log(f"run {run_id} started")

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
                on_run_created=started,
                on_simulation=progress,
            )
    except KeyboardInterrupt:
        raise Interrupted(resume_hint("search", run_ids[0] if run_ids else None, args)) from None
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
