"""``canopy eval``: one method, a comparison of several, or the MCTS ablation, on a problem set.

Every tree lands in the store (one eval run per method); an interrupted
evaluation continues with ``--resume RUN_ID``. Bad input raises the project's
error types with one-line messages; ``canopy.cli.main`` prints them.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canopy.common import (
    Interrupted,
    add_db_flag,
    add_model_flags,
    add_search_settings,
    add_settings_flags,
    add_task_flags,
    add_worker_flags,
    check_models,
    fans_out,
    load_components,
    log,
    resume_hint,
    search_settings,
)
from canopy.errors import UsageError
from engine.baselines import BEAM_SCORES, METHODS, EvalSettings
from engine.defaults import eval_defaults, search_defaults

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from engine.api import Components
    from engine.fanout import WorkerPool
    from engine.types import Problem

_SETTING_CHOICES = {"beam_score": BEAM_SCORES}


def add_eval_parser(subcommands) -> argparse.ArgumentParser:
    """Add the ``eval`` subcommand to ``subcommands`` (argparse's subparsers)."""
    parser = subcommands.add_parser(
        "eval", help="Evaluate a method, compare methods, or ablate MCTS on a problem set."
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--method", choices=METHODS, help="Evaluate one method.")
    what.add_argument(
        "--compare",
        metavar="M1,M2,...",
        help=f"Comparison of several methods ({', '.join(METHODS)}); the same command again on the same "
        "--db continues its runs instead of redoing them.",
    )
    what.add_argument(
        "--ablation", action="store_true", help="MCTS with each component added in turn (AlphaLLM Table 3)."
    )
    what.add_argument(
        "--resume",
        type=int,
        metavar="RUN_ID",
        help="Continue an interrupted eval run (with its own settings).",
    )
    add_model_flags(parser)
    add_task_flags(parser)
    parser.add_argument("--n-problems", type=int, default=10, help="How many problems (>= 1).")
    parser.add_argument("--offset", type=int, default=0, help="Index of the first problem (>= 0).")
    parser.add_argument("--out", default="eval-report", help="Folder for --compare/--ablation reports.")
    parser.add_argument(
        "--no-png", action="store_true", help="Skip the report's PNG (its export starts a headless Chrome)."
    )
    parser.add_argument(
        "--equal-tokens",
        action="store_true",
        help="With --compare: run greedy and mcts first, then give self-consistency and best-of-n "
        "as many samples as it takes to spend about the tokens MCTS spent (overrides --samples).",
    )
    parser.add_argument("--config", help="TOML or JSON file of search settings.")
    add_worker_flags(parser, what="the problems (of every method, and every ablation row)")
    add_db_flag(parser)
    parser.add_argument("--json", action="store_true", help="Print one JSON object with the result.")
    group = parser.add_argument_group("baseline settings (default: the task's, see engine/defaults.py)")
    add_settings_flags(group, EvalSettings, _SETTING_CHOICES, skip=("search",))
    add_search_settings(parser)
    return parser


def _eval_settings(args: argparse.Namespace):
    """The evaluation's settings and critic models, from --config and the flags."""
    search, critic_models = search_settings(args, base=search_defaults(args.task))
    baseline = eval_defaults(args.task) | {
        field.name: getattr(args, field.name) for field in fields(EvalSettings) if hasattr(args, field.name)
    }
    baseline.pop("search", None)
    return EvalSettings(**baseline, search=search), critic_models


def _methods(args: argparse.Namespace) -> list[str]:
    if args.method:
        return [args.method]
    if args.ablation:
        return ["mcts"]
    methods = [name.strip() for name in args.compare.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise UsageError(
            f"--compare: unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}"
        )
    if len(methods) < 2 or len(set(methods)) != len(methods):
        raise UsageError("--compare needs at least two different methods, e.g. greedy,self-consistency,mcts")
    return methods


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    if args.n_problems < 1:
        raise UsageError(f"--n-problems must be >= 1, got {args.n_problems}")
    if args.offset < 0:
        raise UsageError(f"--offset must be >= 0, got {args.offset}")
    return {
        "task": args.task,
        "data": str(Path(args.data).resolve()) if args.data else None,
        "split": args.split,
        "steps": args.steps,
        "max_number": args.max_number,
        "n_problems": args.n_problems,
        "offset": args.offset,
    }


def load_selection(selection: dict[str, Any]):
    """The problems a selection (as stored in an eval run's meta) names."""
    from engine.tasks import TaskError, load_problems

    problems = load_problems(
        selection["task"],
        split=selection["split"],
        count=selection["offset"] + selection["n_problems"],
        data=selection["data"],
        steps=selection["steps"],
        max_number=selection["max_number"],
    )[selection["offset"] :]
    if not problems:
        raise TaskError(f"no problems from offset {selection['offset']}: the source has fewer")
    return problems


class _ProblemProgress:
    """A tqdm bar on stderr over problems (all methods' problems for a comparison)."""

    def __init__(self, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="problem", file=sys.stderr, dynamic_ncols=True)
        self.correct: dict[str, int] = {}

    def __call__(self, tag: str, record, done: int, total: int) -> None:
        self.correct[tag] = self.correct.get(tag, 0) + bool(record.correct)
        self.bar.update(1)
        self.bar.set_postfix(method=tag, correct=f"{self.correct[tag]}/{done}")

    def close(self) -> None:
        self.bar.close()


def cmd_eval(args: argparse.Namespace) -> int:
    from engine.api import RunNotResumable, stored_critic_models
    from engine.compare import ablation_configs
    from engine.evaluate import eval_run
    from store.db import make_engine

    fan_out = fans_out(args)  # checked before anything loads
    if args.resume is not None:
        engine = make_engine(args.db)
        run = eval_run(engine, args.resume)
        if "problems" not in run.config.get("meta", {}):
            raise RunNotResumable(
                f"run {args.resume} was not made by `canopy eval`; it cannot be resumed here"
            )
        settings = EvalSettings.from_dict(run.config["settings"])
        critic_models = stored_critic_models(run)
        selection = run.config["meta"]["problems"]
        methods, model, rollout_model = [run.method], run.model, run.rollout_model
        backend = run.config["meta"].get("backend", {"name": "hf", "base_url": None})
    else:
        methods = _methods(args)
        selection = _selection(args)
        settings, critic_models = _eval_settings(args)
        model, rollout_model = args.model, args.rollout_model
        backend = {"name": args.backend, "base_url": args.base_url}
        check_models(model, rollout_model)
        engine = None
    problems = load_selection(selection)
    if not fan_out:
        engine = engine or make_engine(args.db)
    search = settings.search
    if "mcts" not in methods:
        # Baselines never consult the similarity filter: don't load an embedding model for it.
        search = search.with_overrides(similarity="off")
    if args.ablation:
        # One set of components for every row: the last row turns every component on.
        search = ablation_configs(search, value_head=critic_models.value is not None)[-1][1]
    # Best-of-N reranks with the ORM and beam search follows the PRM whatever weight the
    # search gives them: load them (at weight 0 the search itself still ignores them).
    loaded = search.with_overrides(
        weight_orm=1.0 if "best-of-n" in methods else search.weight_orm,
        weight_prm=1.0 if "beam" in methods else search.weight_prm,
    )
    build_components = functools.partial(
        load_components,
        loaded,
        critic_models,
        model=model,
        rollout_model=rollout_model,
        backend=backend["name"],
        base_url=backend["base_url"],
    )
    evaluate_and_report = functools.partial(
        _run,
        args,
        methods=methods,
        problems=problems,
        settings=settings,
        selection=selection,
        backend=backend,
    )
    if fan_out:
        from engine.fanout import WorkerPool
        from store.db import default_db_url, normalize_url

        # Ray first: an unreachable cluster stops the command before the store is touched.
        with WorkerPool(
            database_url=normalize_url(args.db or default_db_url()),
            build_components=build_components,
            workers=args.workers,
            address=args.ray_address,
        ) as pool:
            log(f"{args.workers} workers loaded {model}")
            return evaluate_and_report(engine=pool.engine, where={"pool": pool})
    return evaluate_and_report(engine=engine, where={"components": build_components()})


def _run(
    args: argparse.Namespace,
    *,
    engine: Engine,
    methods: list[str],
    problems: list[Problem],
    settings: EvalSettings,
    selection: dict[str, Any],
    backend: dict[str, Any],
    where: dict[str, Components | WorkerPool],
) -> int:
    """Evaluate one method, a comparison or the ablation, where ``where`` says:
    ``{"components": ...}`` in this process, ``{"pool": ...}`` on Ray actors;
    then print the result."""
    from engine.compare import ablation_configs, compare, run_ablation
    from engine.evaluate import evaluate
    from engine.reports import results_table

    meta = {"problems": selection, "backend": backend}
    rows = len(methods)
    pool, components = where.get("pool"), where.get("components")
    if args.ablation:
        value_head = pool.has_value_head() if pool is not None else components.critics.value is not None
        rows = len(ablation_configs(settings.search, value_head=value_head))
    progress = _ProblemProgress(len(problems) * rows)
    run_ids: list[int] = []

    def started(run_id: int) -> None:
        run_ids.append(run_id)
        log(f"eval run {run_id} started; if it stops, {resume_hint('eval', run_id, args)}")

    def continued(run_id: int) -> None:
        log(f"continuing eval run {run_id}, made earlier with these same settings")

    report_args = {"out_dir": args.out, "png": not args.no_png, "on_problem": progress, "meta": meta}
    try:
        if args.compare:
            report = compare(
                engine,
                methods=methods,
                problems=problems,
                settings=settings,
                on_run_created=started,
                on_run_continued=continued,
                equal_tokens=args.equal_tokens,
                **where,
                **report_args,
            )
        elif args.ablation:
            report = run_ablation(
                engine,
                problems=problems,
                settings=settings,
                on_run_created=started,
                on_run_continued=continued,
                **where,
                **report_args,
            )
        else:
            if pool is not None:
                from engine.fanout import evaluate_on_workers

                evaluate_one = functools.partial(evaluate_on_workers, pool)
            else:
                evaluate_one = functools.partial(evaluate, engine, components=components)
            result = evaluate_one(
                method=methods[0],
                problems=problems,
                settings=settings,
                run_id=args.resume,
                on_problem=lambda record, done, total: progress(methods[0], record, done, total),
                meta=meta,
                on_run_created=started,
            )
    except KeyboardInterrupt:
        if args.compare or args.ablation:
            raise Interrupted("run the same command again to continue its runs") from None
        resume = args.resume if args.resume is not None else (run_ids[0] if run_ids else None)
        raise Interrupted(resume_hint("eval", resume, args)) from None
    finally:
        progress.close()
    if args.compare or args.ablation:
        if args.json:
            print(
                json.dumps(
                    {
                        "results": [
                            {"label": label, **result.to_dict()}
                            for label, result in zip(report.labels, report.results, strict=True)
                        ],
                        "table": str(report.table),
                        "html": str(report.html),
                        "png": str(report.png) if report.png else None,
                        "png_note": report.png_note,
                    }
                )
            )
        else:
            print(results_table(report.results, labels=report.labels), end="")
            print(f"wrote {report.table} and {report.html}; {report.png_note}")
        return 0
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        accuracy = "n/a" if result.accuracy is None else f"{result.accuracy:.1%}"
        print(
            f"run {result.run_id} {result.method}: accuracy {accuracy} on {result.n} problems; "
            f"{result.generated_tokens:.1f} generated and {result.prefill_tokens:.1f} prefill tokens "
            f"per problem; {result.seconds:.1f} s"
        )
    return 0
