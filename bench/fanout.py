"""Problems per hour of one evaluation with ``--workers 1`` and ``--workers 2``.
Prints one JSON object (also written to ``--out`` when given).

    python bench/fanout.py [--problems 20] [--method mcts] [--workers 1,2] [-- extra eval flags]

Runs the same ``canopy eval --method M --task arithmetic --n-problems N --seed S
--json`` once per worker count, each on its own fresh SQLite store in a
temporary folder, and times each command whole (start, Ray, model loading and
the problems: what a user waits for). Flags after ``--`` go to every
``canopy eval`` unchanged (e.g. ``-- --simulations 2 --max-tokens 16``).
Keys: ``problems``, ``method``, ``model``, ``runs`` (per worker count:
``wall_seconds``, ``problems_per_hour``, ``accuracy``, ``answers``),
``speedup`` (the last count's problems per hour over the first's),
``same_answers`` (every count gave the same answer on every problem, as it
must for the same seed), ``goal_speedup`` (1.7) and ``meets_goal``, and the
machine's ``cpus`` and ``load_average`` before the first run: on a busy
machine the speedup means little, so say the load next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOAL_SPEEDUP = 1.7


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--problems", type=int, default=20, help="Arithmetic problems per run (>= 1).")
    parser.add_argument("--method", default="mcts", help="The `canopy eval --method` to time.")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", default="1,2", help="Comma-separated worker counts, in run order.")
    parser.add_argument("--out", help="Also write the JSON here.")
    return parser


def run_eval(args: argparse.Namespace, workers: int, folder: Path, extra: list[str]) -> dict:
    """One timed ``canopy eval`` with ``workers`` workers on a fresh store."""
    command = [sys.executable, "-m", "canopy", "eval", "--method", args.method, "--model", args.model]
    command += ["--task", "arithmetic", "--n-problems", str(args.problems), "--seed", str(args.seed)]
    command += ["--workers", str(workers), "--db", str(folder / f"workers-{workers}.db"), "--json", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result = json.loads(done.stdout)
    return {
        "wall_seconds": round(wall, 1),
        "problems_per_hour": round(result["n"] * 3600 / wall, 1),
        "accuracy": result["accuracy"],
        "answers": [record["answer"] for record in result["records"]],
    }


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = make_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    counts = [int(count) for count in args.workers.split(",")]
    load_average = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="canopy-fanout-") as folder:
        runs = {str(count): run_eval(args, count, Path(folder), extra) for count in counts}
    rates = [runs[str(count)].get("problems_per_hour") for count in counts]
    speedup = round(rates[-1] / rates[0], 2) if None not in rates and len(rates) > 1 else None
    answers = [run.get("answers") for run in runs.values()]
    report = {
        "problems": args.problems,
        "method": args.method,
        "model": args.model,
        "extra_eval_flags": extra,
        "runs": runs,
        "speedup": speedup,
        "same_answers": None not in answers and all(a == answers[0] for a in answers),
        "goal_speedup": GOAL_SPEEDUP,
        "meets_goal": speedup is not None and speedup >= GOAL_SPEEDUP,
        "cpus": os.cpu_count(),
        "load_average": [round(load, 2) for load in load_average],
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
