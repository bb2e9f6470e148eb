"""Concurrent writers on one store: the same MCTS evaluation written by several
processes at once to SQLite and to PostgreSQL, and by one process for reference.
Prints one JSON object (also written to ``--out`` when given).

    python bench/store_writers.py [--writers 4] [--problems 8] [--simulations 40]
        [--stores sqlite,postgresql] [--postgres URL] [--out FILE]

Each writer is its own process (multiprocessing, spawn context) that runs
``engine.evaluate.evaluate`` (method mcts, the fake policy and critics of
``tests/fakes.py``) on its own slice of ``--problems`` arithmetic problems, all
against one store: a SQLite file in a temporary folder, or a PostgreSQL
database (a fresh one on a throw-away server from ``tests/postgres.py``, unless
``--postgres`` names a database to add the runs to). The writers start together
once all have loaded. For reference, one process first writes the same problems
alone into a store of its own (in ``--postgres``: beside them, counted apart by
run). Afterwards the store is read back: nothing a writer committed may be missing.

Keys: ``stores`` maps each store ("sqlite", "postgresql") to ``runs``, one per
writer count (``"1"`` and e.g. ``"4"``), each with ``writers``, ``problems``,
``errors`` (exceptions caught in the writers, their heartbeat threads included),
``lock_errors`` (those that are operational errors: locked, busy, deadlock,
serialization), ``error_texts`` (writer number and message),
``simulations_expected`` (problems x simulations), ``simulations_found`` (the
stored trees' ``simulations_done``), ``simulations_lost`` (expected - found),
``simulations_with_events`` (simulations whose backpropagate event is stored),
``trees`` and ``trees_completed``, ``node_rows`` and ``node_count_sum`` (node
rows stored and the count the trees say they hold), ``event_rows``,
``filtered_rows``, ``program_rows`` and ``rows`` (their sum), ``wall_seconds``
(first writer start to last writer end, loading excluded),
``simulations_per_second`` and ``rows_per_second``; and ``speedup``
(many writers' simulations per second over one's). Top level: the settings,
``cpus`` and ``load_average`` (say the machine's load next to the numbers).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402
from sqlalchemy.exc import OperationalError  # noqa: E402

from bench.stores import databases, emit, load_average  # noqa: E402
from engine.baselines import EvalSettings  # noqa: E402
from engine.config import SearchConfig  # noqa: E402
from engine.types import Problem  # noqa: E402
from store import schema  # noqa: E402
from store.db import make_engine  # noqa: E402

STORES = ("sqlite", "postgresql")
LOCK_WORDS = ("locked", "busy", "deadlock", "could not serialize", "lock timeout")
START_TIMEOUT_S = 300
"""How long the parent waits for every writer to load before giving up."""


def settings(simulations: int, seed: int) -> EvalSettings:
    """The evaluation every writer runs: MCTS with one rollout per node and the
    edit-distance sibling filter (no embedding model to load)."""
    return EvalSettings(
        search=SearchConfig(simulations=simulations, seed=seed, similarity="edit", rollouts=1)
    )


def is_lock_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the store refusing a write for concurrency's sake: any
    SQLAlchemy ``OperationalError`` (SQLite's "database is locked"), or a message
    naming a lock, a deadlock or a serialization failure (PostgreSQL)."""
    text = str(exc).lower()
    return isinstance(exc, OperationalError) or any(word in text for word in LOCK_WORDS)


def write_slice(
    url: str,
    writer: int,
    problems: list[Problem],
    simulations: int,
    seed: int,
    start: Any,
    results: Any,
) -> None:
    """One writer process: load the fakes, wait at ``start`` (a barrier) for the
    others, evaluate ``problems`` into ``url`` and put a report on ``results``:
    its run id, start and end times (``time.time()``) and every exception caught,
    the heartbeat thread's included (a writer stops at its first failure)."""
    from engine.evaluate import evaluate
    from tests.fakes import fake_components

    errors: list[dict[str, Any]] = []

    def record(exc: BaseException) -> None:
        errors.append(
            {"writer": writer, "lock": is_lock_error(exc), "text": f"{type(exc).__name__}: {exc}"[:600]}
        )

    def report(started: float | None = None, finished: float | None = None) -> None:
        run_id = run_ids[0] if run_ids else None
        results.put(
            {"writer": writer, "run_id": run_id, "started": started, "finished": finished, "errors": errors}
        )

    threading.excepthook = lambda hook: record(hook.exc_value)
    run_ids: list[int] = []
    eval_settings = settings(simulations, seed)
    try:
        engine = make_engine(url)
        components = fake_components(None, eval_settings.search)
    except Exception as exc:  # reported, not raised: the parent counts it
        record(exc)
        start.abort()
        report()
        return
    try:
        start.wait()
    except threading.BrokenBarrierError:  # another writer failed to load: nobody starts
        engine.dispose()
        report()
        return
    started = time.time()
    try:
        evaluate(
            engine,
            method="mcts",
            problems=problems,
            components=components,
            settings=eval_settings,
            on_run_created=run_ids.append,
        )
    except Exception as exc:  # reported, not raised: the parent counts it
        record(exc)
    finished = time.time()
    engine.dispose()
    report(started, finished)


def run_writers(url: str, slices: list[list[Problem]], simulations: int, seed: int) -> list[dict[str, Any]]:
    """Start one spawned process per slice on ``url``, let them go together once
    all have loaded, and return their reports (one per writer)."""
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(len(slices) + 1)
    results = context.Queue()
    processes = [
        context.Process(
            target=write_slice, args=(url, writer, problems, simulations, seed, start, results), daemon=True
        )
        for writer, problems in enumerate(slices)
    ]
    for process in processes:
        process.start()
    try:
        start.wait(timeout=START_TIMEOUT_S)
    except threading.BrokenBarrierError:
        pass  # a writer failed to load: it says so in its report
    reports: dict[int, dict[str, Any]] = {}
    while len(reports) < len(processes):
        try:
            report = results.get(timeout=1)
        except queue.Empty:
            if any(process.is_alive() for process in processes) or not results.empty():
                continue
            break  # the rest died without a report
        reports[report["writer"]] = report
    for writer, process in enumerate(processes):
        process.join(timeout=30)
        if process.is_alive():
            process.kill()
            process.join()
        if writer not in reports:
            text = f"writer process ended with exit code {process.exitcode} and no report"
            error = {"writer": writer, "lock": False, "text": text}
            reports[writer] = {
                "writer": writer,
                "run_id": None,
                "started": None,
                "finished": None,
                "errors": [error],
            }
    return [reports[writer] for writer in sorted(reports)]


def read_back(url: str, run_ids: list[int]) -> dict[str, int]:
    """What the store holds for ``run_ids``: trees completed, simulations done,
    simulations with a stored backpropagate event, and row counts."""
    engine = make_engine(url)
    tree_ids = select(schema.Tree.id).where(schema.Tree.run_id.in_(run_ids))
    tree = schema.Tree
    with engine.connect() as connection:
        trees, simulations, node_count_sum, completed = connection.execute(
            select(
                func.count(tree.id),
                func.coalesce(func.sum(tree.simulations_done), 0),
                func.coalesce(func.sum(tree.node_count), 0),
                func.count(tree.id).filter(tree.status == "completed"),
            ).where(tree.run_id.in_(run_ids))
        ).one()
        backups = connection.execute(
            select(schema.SearchEvent.tree_id, schema.SearchEvent.simulation).where(
                schema.SearchEvent.tree_id.in_(tree_ids), schema.SearchEvent.phase == "backpropagate"
            )
        ).all()
        rows = {
            name: connection.execute(
                select(func.count()).select_from(table).where(table.tree_id.in_(tree_ids))
            ).scalar_one()
            for name, table in (
                ("node_rows", schema.Node),
                ("event_rows", schema.SearchEvent),
                ("filtered_rows", schema.FilteredOption),
                ("program_rows", schema.VerifierProgram),
            )
        }
    found = {
        "trees": trees,
        "trees_completed": completed,
        "simulations_found": simulations,
        "simulations_with_events": len(set(backups)),
        "node_count_sum": node_count_sum,
        **rows,
    }
    engine.dispose()
    return found


def measure_run(
    url: str, problems: list[Problem], writers: int, simulations: int, seed: int
) -> dict[str, Any]:
    """``problems`` split over ``writers`` concurrent processes into ``url``, and
    what the store holds afterwards (see the module docstring for the keys)."""
    per_writer = -(-len(problems) // writers)
    slices = [problems[i * per_writer : (i + 1) * per_writer] for i in range(writers)]
    reports = run_writers(url, [s for s in slices if s], simulations, seed)
    errors = [error for report in reports for error in report["errors"]]
    run_ids = [report["run_id"] for report in reports if report["run_id"] is not None]
    found = read_back(url, run_ids) if run_ids else {}
    starts = [report["started"] for report in reports if report["started"] is not None]
    ends = [report["finished"] for report in reports if report["finished"] is not None]
    wall = max(ends) - min(starts) if starts and ends else None
    expected = len(problems) * simulations
    simulations_found = found.get("simulations_found", 0)
    rows = sum(found.get(key, 0) for key in ("node_rows", "event_rows", "filtered_rows", "program_rows"))
    return {
        "writers": len(reports),
        "problems": len(problems),
        "errors": len(errors),
        "lock_errors": sum(error["lock"] for error in errors),
        "error_texts": [f"writer {error['writer']}: {error['text']}" for error in errors],
        "simulations_expected": expected,
        "simulations_found": simulations_found,
        "simulations_lost": expected - simulations_found,
        **{key: value for key, value in found.items() if key != "simulations_found"},
        "rows": rows,
        "wall_seconds": round(wall, 2) if wall else None,
        "simulations_per_second": round(simulations_found / wall, 1) if wall else None,
        "rows_per_second": round(rows / wall, 1) if wall else None,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from engine.tasks import load_problems

    kinds = [kind.strip() for kind in args.stores.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(STORES))
    if unknown:
        raise SystemExit(f"unknown store(s) {', '.join(unknown)}; choose from {', '.join(STORES)}")
    problems = load_problems("arithmetic", count=args.writers * args.problems, seed=args.seed)
    load_start = load_average()
    stores = {}
    with databases(args.postgres) as new_database:
        for kind in kinds:
            runs = {}
            for writers in sorted({1, args.writers}):
                runs[str(writers)] = measure_run(
                    new_database(kind), problems, writers, args.simulations, args.seed
                )
            one, many = runs["1"], runs[str(args.writers)]
            speedup = (
                round(many["simulations_per_second"] / one["simulations_per_second"], 2)
                if one["simulations_per_second"] and many["simulations_per_second"]
                else None
            )
            stores[kind] = {"runs": runs, "speedup": speedup}
    return {
        "benchmark": "store_writers",
        "writers": args.writers,
        "problems_per_writer": args.problems,
        "simulations": args.simulations,
        "seed": args.seed,
        "stores": stores,
        "cpus": os.cpu_count(),
        "load_average": {"start": load_start, "end": load_average()},
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writers", type=int, default=4, help="Concurrent writer processes.")
    parser.add_argument("--problems", type=int, default=8, help="Problems per writer.")
    parser.add_argument("--simulations", type=int, default=40, help="MCTS simulations per problem.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stores", default="sqlite,postgresql", help="Comma-separated: sqlite, postgresql.")
    parser.add_argument(
        "--postgres", help="A PostgreSQL database URL to write to instead of a throw-away server's."
    )
    parser.add_argument("--out", help="Also write the JSON here.")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    if args.writers < 1 or args.problems < 1 or args.simulations < 1:
        raise SystemExit("--writers, --problems and --simulations must be >= 1")
    return emit(measure(args), args.out)


if __name__ == "__main__":
    main()
