"""How fast the Find page's text search answers over many stored trees.
Prints one JSON object (also written to ``--out`` when given).

    python bench/text_search.py --trees 10000 --nodes 20 [--db URL]

Fills a fresh store (SQLite in a temporary folder unless ``--db`` names an
empty one, e.g. a PostgreSQL database) with ``--trees`` trees of ``--nodes``
nodes each, written through the same tables and triggers as a search, with
varied arithmetic text and one rollout per node; then times
``store.text_index.search_text`` for a fixed set of queries (common words,
rare words, numbers, prefixes, several words), each run ``--repeats`` times.
Keys: ``trees``, ``nodes``, ``fill_seconds``, ``query_ms`` (per query: median
and max), ``median_ms``, ``max_ms``, ``goal_ms`` (200) and ``meets_goal``.
Say the machine's load next to the numbers: it reports the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import insert  # noqa: E402

from store import schema  # noqa: E402
from store.db import make_engine  # noqa: E402
from store.text_index import search_text  # noqa: E402

QUERIES = ["apples", "remainder", "42", "multipl*", "total apples 7", "zebra", "each box", "answer 15"]
WORDS = ["apples", "pears", "boxes", "pens", "marbles", "cookies", "students", "dollars", "miles", "hours"]
GOAL_MS = 200.0


def _text(rng: random.Random) -> str:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    word = rng.choice(WORDS)
    op, result = rng.choice([("+", a + b), ("-", a - b), ("*", a * b)])
    extra = rng.choice(
        ["", " The remainder is 3.", " Multiply the total.", " Each box holds them.", " zebra"]
    )
    return f"Step: {a} {word} {op} {b} = {result} {word}.{extra}"


def fill(engine, trees: int, nodes: int, seed: int) -> float:
    rng = random.Random(seed)
    started = time.perf_counter()
    with engine.begin() as connection:
        run_id = connection.execute(
            insert(schema.Run).values(model="bench", task="custom", config={}, critics={})
        ).inserted_primary_key[0]
        problem_id = connection.execute(
            insert(schema.Problem).values(task="custom", question="How many?", meta={})
        ).inserted_primary_key[0]
    for start in range(0, trees, 500):
        with engine.begin() as connection:
            for _ in range(start, min(start + 500, trees)):
                tree_id = connection.execute(
                    insert(schema.Tree).values(
                        run_id=run_id, problem_id=problem_id, answers={}, chosen_path=[], node_count=nodes
                    )
                ).inserted_primary_key[0]
                rows = []
                for index in range(nodes):
                    answer = str(rng.randint(1, 200)) if index == nodes - 1 else None
                    rollout = {"text": _text(rng), "tokens": 20, "answer": answer, "orm": None, "tool": None}
                    rows.append(
                        dict(
                            tree_id=tree_id,
                            index=index,
                            parent_index=index - 1,
                            option_text=_text(rng),
                            answer=answer,
                            token_ids=[],
                            rollouts=[rollout],
                        )
                    )
                connection.execute(insert(schema.Node), rows)
    return time.perf_counter() - started


def measure(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        engine = make_engine(args.db or f"sqlite:///{Path(folder) / 'find.db'}")
        load_start = os.getloadavg()
        fill_seconds = fill(engine, args.trees, args.nodes, args.seed)
        per_query = {}
        for query in QUERIES:
            search_text(engine, query)  # warm the page cache once
            times = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                hits = search_text(engine, query, limit=200)
                times.append((time.perf_counter() - started) * 1000)
            per_query[query] = {
                "median": round(statistics.median(times), 2),
                "max": round(max(times), 2),
                "hits": len(hits),
            }
        engine.dispose()
    medians = [q["median"] for q in per_query.values()]
    return {
        "store": "sqlite" if not args.db else args.db.split(":")[0],
        "trees": args.trees,
        "nodes": args.trees * args.nodes,
        "fill_seconds": round(fill_seconds, 1),
        "query_ms": per_query,
        "median_ms": round(statistics.median(medians), 2),
        "max_ms": round(max(q["max"] for q in per_query.values()), 2),
        "goal_ms": GOAL_MS,
        "meets_goal": max(q["max"] for q in per_query.values()) < GOAL_MS,
        "load_average": {"start": load_start, "end": os.getloadavg()},
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trees", type=int, default=10_000)
    parser.add_argument("--nodes", type=int, default=20, help="Nodes per tree.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="An empty store to fill instead of a temporary SQLite file.")
    parser.add_argument("--out", help="Also write the JSON here.")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    text = json.dumps(measure(args), indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
