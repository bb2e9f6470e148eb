"""How long the Trees page takes to lay out and build the figure of a large tree.

Prints one JSON object: for synthetic trees of 500, 2,000 and 5,000 nodes (random
branching 1-5, with some filtered siblings), the best-of-N seconds for the tidy
layout and for building the whole Plotly figure (layout included). Aim: < 1 s at
5,000 nodes. Run: ``python bench/ui_render.py [--repeat N]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.layout import TreeSnapshot, build_tree_figure, tidy_layout  # noqa: E402

SIZES = (500, 2000, 5000)


def synthetic_tree(size: int, seed: int = 0) -> TreeSnapshot:
    """A random tree: nodes are expanded breadth-first-ish with 1-5 children each."""
    rng = random.Random(seed)
    parents = [-1]
    frontier = [0]
    while len(parents) < size:
        parent = frontier.pop(rng.randrange(len(frontier))) if len(frontier) > 1 else frontier.pop()
        for _ in range(rng.randint(1, 5)):
            if len(parents) == size:
                break
            frontier.append(len(parents))
            parents.append(parent)
        if not frontier:
            frontier.append(len(parents) - 1)
    depth = [0] * size
    for index in range(1, size):
        depth[index] = depth[parents[index]] + 1
    scores = np.random.default_rng(seed).random((size, 5))
    nodes = pd.DataFrame(
        {
            "index": range(size),
            "parent_index": parents,
            "depth": depth,
            "option_text": [f"Step {d}: {rng.randint(1, 99)} + {rng.randint(1, 99)} = ..." for d in depth],
            "visits": np.random.default_rng(seed + 1).integers(0, 50, size),
            "q": scores[:, 0],
            "prior": scores[:, 1],
            "value_score": scores[:, 2],
            "prm_score": scores[:, 3],
            "orm_score": scores[:, 4],
            "tool_score": np.where(scores[:, 0] > 0.5, 1.0, np.nan),
            "combined_score": scores.mean(axis=1),
            "terminal": [False] * size,
            "answer": [None] * size,
            "created_simulation": range(-1, size - 1),
        }
    )
    count = size // 20
    filtered = pd.DataFrame(
        {
            "id": range(count),
            "parent_index": [rng.randrange(size) for _ in range(count)],
            "text": ["a near-duplicate step"] * count,
            "similarity": [0.97] * count,
            "measure": ["cosine"] * count,
            "collided_with_index": [1] * count,
            "simulation": [0] * count,
        }
    )
    return TreeSnapshot(nodes, filtered, None)


def best_of(repeat: int, work) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="Best of this many runs.")
    args = parser.parse_args()
    results = []
    for size in SIZES:
        snapshot = synthetic_tree(size)
        parents = snapshot.nodes["parent_index"].tolist()
        path = [0]
        layout_s = best_of(args.repeat, lambda: tidy_layout(parents))  # noqa: B023
        figure_s = best_of(
            args.repeat,
            lambda: build_tree_figure(snapshot, color_by="prm", chosen_path=path, selected=0),  # noqa: B023
        )
        figure = build_tree_figure(snapshot, color_by="prm", chosen_path=path, selected=0)
        json_s = best_of(args.repeat, lambda: figure.to_json())  # noqa: B023
        results.append(
            {
                "nodes": size,
                "filtered": len(snapshot.filtered),
                "layout_s": round(layout_s, 4),
                "figure_s": round(figure_s, 4),
                "figure_json_s": round(json_s, 4),
                "trace_type": type(figure.data[-1]).__name__,
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "ui_render",
                "python": platform.python_version(),
                "target_s_at_5000": 1.0,
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
