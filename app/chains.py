"""Improve chains for the Rounds page: which iterations belong to one
``canopy improve`` loop, which held-out runs each round made, and how one
problem fared in each. Pure functions of the store's rows (no Streamlit), so
the page stays short and the tests call them directly.

A loop writes one ``Iteration`` per round, each pointing at the one before
(``parent_id``); round 0, the base, evaluates the starting model. Every round
evaluates the same held-out problems, so a problem's trees line up by
``problem_id`` across the rounds' ``eval_mcts`` and ``eval_greedy`` runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd

from store.iterations import IterationMetrics

MCTS, GREEDY = "eval_mcts", "eval_greedy"
"""``IterationMetrics.runs`` keys of a round's held-out evaluations."""

MARKS = {True: "✓", False: "✗", None: "?"}
"""A tree's verdict as one character ("?": not graded); "–" where a round has no tree."""
NO_TREE = "–"


@dataclass(frozen=True)
class Round:
    """One round of an improve chain.

    Attributes:
        iteration_id: its ``Iteration`` row.
        number: 0 for the base evaluation, then 1, 2, ... (its place in the chain).
        name: the iteration's name ("base", "round 1", ...).
        status: "running", "completed", "failed" or "interrupted".
        stage: the stage in progress ("eval_mcts 3/20") or "done".
        mcts_run: the run of its held-out MCTS evaluation; None before it began.
        greedy_run: the run of its held-out greedy evaluation; None before it began.
        done: the stages it finished, so a run's counts can be told final or partial.
        error: "ExceptionType: message" of the failure that stopped it, if any.
    """

    iteration_id: int
    number: int
    name: str
    status: str
    stage: str
    mcts_run: int | None
    greedy_run: int | None
    done: tuple[str, ...]
    error: str | None = None

    @property
    def title(self) -> str:
        return "Base model" if self.number == 0 else f"Round {self.number}"

    def finished(self, stage: str) -> bool:
        return stage in self.done


@dataclass(frozen=True)
class Chain:
    """The rounds of one improve loop, base first; ``base_id`` names it."""

    base_id: int
    model: str
    task: str
    created_at: datetime | None
    rounds: tuple[Round, ...]

    @property
    def label(self) -> str:
        when = f" · {self.created_at:%Y-%m-%d %H:%M}" if isinstance(self.created_at, datetime) else ""
        later = len(self.rounds) - 1
        rounds = f"base + {later} round{'s' * (later != 1)}" if later else "base only"
        return f"Loop from iteration {self.base_id} · {self.model} · {self.task} · {rounds}{when}"

    def evaluated(self, trees: pd.DataFrame) -> list[int]:
        """The numbers of the rounds with a held-out tree among ``trees``."""
        held = set(trees["run_id"]) if not trees.empty else set()
        return [r.number for r in self.rounds if {r.mcts_run, r.greedy_run} & held]

    def run_ids(self) -> tuple[int, ...]:
        return tuple(
            sorted({run for r in self.rounds for run in (r.mcts_run, r.greedy_run) if run is not None})
        )


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value))


def _metrics(row: dict[str, Any]) -> IterationMetrics:
    return IterationMetrics.from_dict(row["metrics"] if isinstance(row["metrics"], dict) else {})


def chains(iterations: pd.DataFrame) -> list[Chain]:
    """Group iteration rows (``app.data.iterations``) into chains by following
    ``parent_id`` to the base, newest chain first. A parent missing from the rows,
    or a cycle, starts a chain of its own rather than losing rows."""
    rows = {int(row["id"]): row for row in iterations.to_dict("records")}
    parent = {i: int(row["parent_id"]) if _present(row["parent_id"]) else None for i, row in rows.items()}

    def base_and_depth(iteration_id: int) -> tuple[int, int]:
        seen, current = [iteration_id], iteration_id
        while (up := parent[current]) is not None and up in rows and up not in seen:
            seen.append(up)
            current = up
        return current, len(seen) - 1

    members: dict[int, list[tuple[int, int]]] = {}
    for iteration_id in rows:
        base, depth = base_and_depth(iteration_id)
        members.setdefault(base, []).append((depth, iteration_id))
    found = []
    for base, placed in members.items():
        rounds = []
        for depth, iteration_id in sorted(placed):
            row = rows[iteration_id]
            metrics = _metrics(row)
            rounds.append(
                Round(
                    iteration_id=iteration_id,
                    number=depth,
                    name=str(row["name"] or ""),
                    status=str(row["status"] or ""),
                    stage=str(row["stage"] or ""),
                    mcts_run=metrics.runs.get(MCTS),
                    greedy_run=metrics.runs.get(GREEDY),
                    done=tuple(metrics.done),
                    error=metrics.error,
                )
            )
        config = _metrics(rows[base]).config
        created = rows[base]["created_at"]
        found.append(
            Chain(
                base_id=base,
                model=str(rows[base]["model"] or config.get("model") or "?"),
                task=str(config.get("task") or "?"),
                created_at=created if isinstance(created, datetime) else None,
                rounds=tuple(rounds),
            )
        )
    return sorted(found, key=lambda chain: chain.base_id, reverse=True)


def tree_of(trees: pd.DataFrame, run_id: int | None, problem_id: int) -> pd.Series | None:
    """The tree of ``run_id`` on the problem (the newest if a run holds several), or None."""
    if run_id is None or trees.empty:
        return None
    found = trees[(trees["run_id"] == run_id) & (trees["problem_id"] == problem_id)]
    return None if found.empty else found.sort_values("id").iloc[-1]


def verdict(tree: pd.Series | None) -> bool | None:
    return bool(tree["correct"]) if tree is not None and _present(tree["correct"]) else None


def mark(tree: pd.Series | None) -> str:
    return NO_TREE if tree is None else MARKS[verdict(tree)]


def problems(trees: pd.DataFrame, chain: Chain) -> pd.DataFrame:
    """One row per held-out problem of the chain (any problem one of its rounds
    evaluated), by task index: ``problem_id``, ``index``, ``question``, ``gold``,
    ``marks`` (the MCTS verdicts, one character per round, base first) and
    ``changed`` (the graded rounds do not all agree)."""
    columns = ["problem_id", "index", "question", "gold", "marks", "changed"]
    held_out = trees[trees["run_id"].isin(chain.run_ids())] if not trees.empty else trees
    if held_out.empty:
        return pd.DataFrame(columns=columns)
    rows = []
    for problem_id, group in held_out.groupby("problem_id", sort=False):
        first = group.iloc[0]
        found = [tree_of(trees, r.mcts_run, int(problem_id)) for r in chain.rounds]
        verdicts = {verdict(tree) for tree in found if verdict(tree) is not None}
        rows.append(
            {
                "problem_id": int(problem_id),
                "index": int(first["problem_index"]) if _present(first["problem_index"]) else None,
                "question": str(first["question"]),
                "gold": first["gold"] if _present(first["gold"]) else None,
                "marks": " ".join(mark(tree) for tree in found),
                "changed": len(verdicts) > 1,
            }
        )
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["index", "problem_id"], na_position="last").reset_index(drop=True)


def problem_label(row: pd.Series | dict[str, Any], width: int = 80) -> str:
    """The picker's label, "#3 · ✗ ✓ ✓ · question…": task index, each round's verdict, question."""
    question = " ".join(str(row["question"]).split())
    question = question if len(question) <= width else question[: width - 1] + "…"
    index = f"#{int(row['index'])}" if _present(row["index"]) else f"problem {row['problem_id']}"
    return f"{index} · {row['marks']} · {question}"


def accuracy(trees: pd.DataFrame, run_id: int | None) -> tuple[float | None, int, int]:
    """``(accuracy, correct, graded)`` of a run's trees on the held-out set."""
    if run_id is None or trees.empty:
        return None, 0, 0
    graded = trees[(trees["run_id"] == run_id) & trees["correct"].notna()]
    correct = int(graded["correct"].astype(bool).sum())
    return (correct / len(graded) if len(graded) else None), correct, len(graded)


def path_verdicts(nodes: pd.DataFrame, chosen_path: list[int], width: int = 60) -> pd.DataFrame:
    """The critics' scores of each step on the chosen path (the root left out):
    ``node``, ``step`` (its text on one line, cut at ``width``), then ``value``,
    ``PRM``, ``ORM``, ``tool``, ``combined`` and ``Q``, each in [0, 1]. A critic
    that scored none of the steps (it did not run) is left out: the table sits in
    a narrow column, and an empty column would push the others out of sight."""
    by_index = nodes.set_index("index") if len(nodes) else nodes
    rows = []
    for index in chosen_path:
        if index not in by_index.index or by_index.loc[index, "parent_index"] < 0:
            continue
        node = by_index.loc[index]
        text = " ".join(str(node["option_text"]).split())
        rows.append(
            {
                "node": int(index),
                "step": text if len(text) <= width else text[: width - 1] + "…",
                "value": node["value_score"],
                "PRM": node["prm_score"],
                "ORM": node["orm_score"],
                "tool": node["tool_score"],
                "combined": node["combined_score"],
                "Q": node["q"],
            }
        )
    table = pd.DataFrame(rows, columns=["node", "step", "value", "PRM", "ORM", "tool", "combined", "Q"])
    unscored = [name for name in ("value", "PRM", "ORM", "tool") if table[name].isna().all()]
    return table.drop(columns=unscored) if len(table) else table
