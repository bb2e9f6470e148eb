"""Why did MCTS win or lose against greedy? Read a finished MCTS eval run back
from the store and print one JSON object that separates the possible causes:

- exploration: did any trajectory in the tree (terminal node or rollout) reach
  the gold answer at all ("found")?
- answer selection: when one did, did the chosen answer use it? Accuracy under
  each of the four selection rules stored with every tree (vote, visits, q, orm).
- critic quality: how well each critic's score separates trajectories that
  reached the gold answer from those that did not (ROC AUC: 0.5 is chance).
  ORM and tool scores are judged per rollout or terminal node ("orm_answered",
  "tool_answered": only those that stated an answer, the ones an
  answer-selection rule ranks; unfinished trajectories are easy negatives);
  PRM, combined score and Q per node, against the node's verified outcome.
- the program checker, where it ran: programs written, how many gave a result,
  how many results were right, and on how many problems their majority was.
- branching and termination: tree width, depth, terminal nodes, answer
  diversity, and how many trajectories stopped (token cap) before any answer.
- cost: generated tokens split into options and rollouts.

With ``--greedy RUN`` the problems are paired with a greedy run on the same
problems, with an exact two-sided sign test over the problems only one solved.

    python bench/diagnose_mcts.py --db runs/arith.db --mcts 2 --greedy 1
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import inspect  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from engine.answer_selection import METHODS as SELECTIONS  # noqa: E402
from engine.answers import answers_match  # noqa: E402
from engine.calibration import present, verified_outcome  # noqa: E402
from store import schema  # noqa: E402
from store.db import make_engine  # noqa: E402


def auc(pairs: list[tuple[float, bool]]) -> float | None:
    """P(a positive's score > a negative's), ties counting half; None without both classes."""
    positives = [score for score, hit in pairs if hit]
    negatives = [score for score, hit in pairs if not hit]
    if not positives or not negatives:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided binomial p-value of ``wins`` against ``losses`` at p = 0.5."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def _critic(pairs: list[tuple[float, bool]]) -> dict:
    value = auc(pairs)
    return {
        "auc": None if value is None else round(value, 3),
        "n": len(pairs),
        "positives": sum(hit for _, hit in pairs),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 2) if values else None


def diagnose(db: str, mcts_run: int, greedy_run: int | None = None) -> dict:
    engine = make_engine(db)
    with Session(engine) as session:
        run = session.get(schema.Run, mcts_run)
        if run is None or run.method != "mcts":
            raise SystemExit(f"run {mcts_run} is not an MCTS eval run in {db}")
        trees = session.exec(
            select(schema.Tree).where(schema.Tree.run_id == mcts_run, schema.Tree.status == "completed")
        ).all()
        gold = {p.id: p.answer for p in session.exec(select(schema.Problem)).all()}
        nodes = {
            tree.id: session.exec(select(schema.Node).where(schema.Node.tree_id == tree.id)).all()
            for tree in trees
        }
        tree_programs: dict[int, list] = {}
        if "verifierprogram" in inspect(engine).get_table_names():
            for row in session.exec(
                select(schema.VerifierProgram).where(
                    schema.VerifierProgram.tree_id.in_([tree.id for tree in trees])
                )
            ).all():
                tree_programs.setdefault(row.tree_id, []).append(row)
        greedy = {}
        if greedy_run is not None:
            greedy = {
                t.problem_id: bool(t.correct)
                for t in session.exec(select(schema.Tree).where(schema.Tree.run_id == greedy_run)).all()
                if t.status == "completed"
            }
    critics: dict[str, list[tuple[float, bool]]] = {
        name: [] for name in ("prm", "orm", "orm_answered", "tool", "tool_answered", "combined", "q")
    }
    programs = Counter()
    selection_hits = Counter()
    found = found_not_chosen = answered = trajectories_total = trajectories_answered = 0
    shape = {"nodes": [], "max_depth": [], "root_children": [], "terminal": [], "filtered": [], "answers": []}
    tokens = {"generated": [], "options": [], "rollouts": []}
    paired = Counter()
    for tree in trees:
        answer_gold = gold[tree.problem_id]
        rows = nodes[tree.id]
        trajectories = []  # (answer, orm, tool) of every terminal node and rollout
        for node in rows:
            if node.terminal and present(node.answer):
                trajectories.append((node.answer, node.orm_score, node.tool_score))
            for rollout in node.rollouts or []:
                trajectories.append((rollout.get("answer"), rollout.get("orm"), rollout.get("tool")))
            outcome = verified_outcome(node.terminal, node.answer, node.rollouts, answer_gold)
            if outcome is not None and node.index > 0:
                for name, score in (
                    ("prm", node.prm_score),
                    ("combined", node.combined_score),
                    ("q", node.q),
                ):
                    if present(score):
                        critics[name].append((float(score), outcome >= 0.5))
        for answer, orm, tool in trajectories:
            hit = present(answer) and answers_match(str(answer), str(answer_gold))
            for name, score in (("orm", orm), ("tool", tool)):
                if present(score):
                    critics[name].append((float(score), bool(hit)))
            if present(answer) and present(orm):  # what an answer-selection rule ranks
                critics["orm_answered"].append((float(orm), bool(hit)))
            if present(answer) and present(tool):
                critics["tool_answered"].append((float(tool), bool(hit)))
        verdicts = [row.verdict for row in tree_programs.get(tree.id, []) if present(row.verdict)]
        programs["written"] += len(tree_programs.get(tree.id, []))
        programs["with_a_verdict"] += len(verdicts)
        programs["right"] += sum(answers_match(str(v), str(answer_gold)) for v in verdicts)
        if verdicts:
            top = Counter(verdicts).most_common(1)[0][0]
            programs["majority_right"] += answers_match(str(top), str(answer_gold))
        trajectories_total += len(trajectories)
        trajectories_answered += sum(present(answer) for answer, _, _ in trajectories)
        any_hit = any(present(a) and answers_match(str(a), str(answer_gold)) for a, _, _ in trajectories)
        found += any_hit
        found_not_chosen += any_hit and not tree.correct
        answered += present(tree.answer)
        for rule in SELECTIONS:
            chosen = (tree.answers or {}).get(rule)
            selection_hits[rule] += present(chosen) and answers_match(str(chosen), str(answer_gold))
        shape["nodes"].append(len(rows))
        shape["max_depth"].append(max(node.depth for node in rows))
        shape["root_children"].append(sum(node.parent_index == 0 for node in rows))
        shape["terminal"].append(sum(node.terminal for node in rows))
        shape["filtered"].append(tree.filtered_count)
        shape["answers"].append(len({str(a) for a, _, _ in trajectories if present(a)}))
        tokens["generated"].append(tree.generated_tokens)
        tokens["options"].append(sum(node.token_count for node in rows if node.index > 0))
        tokens["rollouts"].append(sum(r.get("tokens", 0) for node in rows for r in node.rollouts or []))
        if tree.problem_id in greedy:
            paired[(bool(tree.correct), greedy[tree.problem_id])] += 1
    n = len(trees)
    report = {
        "db": db,
        "mcts_run": mcts_run,
        "problems": n,
        "accuracy": round(sum(bool(t.correct) for t in trees) / n, 3) if n else None,
        "answered": answered,
        "trajectories": trajectories_total,
        "trajectories_with_an_answer": trajectories_answered,
        "accuracy_by_selection": {rule: selection_hits[rule] for rule in SELECTIONS},
        "found_in_tree": found,
        "found_not_chosen": found_not_chosen,
        "critic_auc": {name: _critic(pairs) for name, pairs in critics.items()},
        "programs": {
            "written": programs["written"],
            "with_a_verdict": programs["with_a_verdict"],
            "right": programs["right"],
            "problems_where_their_majority_is_right": programs["majority_right"],
        },
        "tree_means": {name: _mean(values) for name, values in shape.items()},
        "token_means": {name: _mean(values) for name, values in tokens.items()},
    }
    if greedy_run is not None:
        wins, losses = paired[(True, False)], paired[(False, True)]
        report["vs_greedy"] = {
            "greedy_run": greedy_run,
            "paired_problems": sum(paired.values()),
            "mcts_only": wins,
            "greedy_only": losses,
            "both": paired[(True, True)],
            "neither": paired[(False, False)],
            "sign_test_p": round(sign_test(wins, losses), 3),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="Database URL or SQLite path.")
    parser.add_argument("--mcts", type=int, required=True, help="The MCTS eval run's id.")
    parser.add_argument("--greedy", type=int, help="A greedy eval run on the same problems, to pair with.")
    args = parser.parse_args(argv)
    print(json.dumps(diagnose(args.db, args.mcts, args.greedy), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
