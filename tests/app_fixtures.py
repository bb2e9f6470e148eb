"""A seeded store for the app's tests: a few runs, ~30-node trees grown by a small
deterministic simulator (nodes, filtered siblings, events, rollouts), an iteration
history, training examples, and the awkward cases the app must survive (a failed
run, a one-node tree, a stale "running" run, a 200-character option, Unicode and
Markdown/HTML in model text).

``grow_tree`` also serves as the fake writer for live-view tests: it commits one
simulation at a time, like the engine's store sink.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from store.db import make_engine
from store.iterations import IterationMetrics
from store.schema import (
    FilteredOption,
    Iteration,
    Node,
    Problem,
    Run,
    SearchEvent,
    TrainingExample,
    Tree,
    VerifierProgram,
)

LONG_OPTION = (
    "Step 3: First we add the apples and the oranges together, which gives 12 + 7 = 19 fruits, "
    "then we subtract the 4 that were eaten, so 19 - 4 = 15 fruits remain in the basket overall, "
    "and that is the count we report."
)
SCRIPT_OPTION = "<script>alert('pwned')</script> so 3 + 4 = 7"
MARKDOWN_OPTION = "# Heading **bold** [click](javascript:alert(1)) `code` | a | b |"
UNICODE_OPTION = "Schritt 2: 3 × 4 = 12 ✓ — 日本語 😀 ∑ naïve"

_STEP_TEXTS = [
    "Step 1: The farmer has 12 apples.",
    "Step 1: Start with 12 apples.",
    "Step 2: He buys 7 more, so 12 + 7 = 19.",
    "Step 2: 12 + 7 = 19 apples now.",
    "Step 3: He gives away 4, so 19 - 4 = 15.",
    "Step 3: 19 - 4 = 16.",
    "Step 4: Each basket holds 5, so 15 / 5 = 3.",
    "The answer is 15.",
    "The answer is 16.",
    LONG_OPTION,
    SCRIPT_OPTION,
    MARKDOWN_OPTION,
    UNICODE_OPTION,
]


def utcnow() -> datetime:
    """Timezone-aware on purpose: sqlmodel >= 0.0.50 refuses naive datetimes."""
    return datetime.now(UTC)


@dataclass
class SeedInfo:
    """Ids of what ``seed_database`` wrote, for tests to point at."""

    url: str
    path: Path | None
    run_ids: dict[str, int] = field(default_factory=dict)
    tree_ids: dict[str, int] = field(default_factory=dict)
    iteration_ids: list[int] = field(default_factory=list)


@dataclass
class _Shape:
    parent: int
    depth: int
    terminal: bool
    text: str
    tokens: int


def _scores(rng: random.Random, quality: float) -> dict[str, float | None]:
    def noisy(spread: float) -> float:
        return round(min(1.0, max(0.0, quality + rng.uniform(-spread, spread))), 4)

    scores: dict[str, float | None] = {
        "value_score": noisy(0.25),
        "prm_score": noisy(0.35),
        "orm_score": noisy(0.2),
        "tool_score": noisy(0.1) if rng.random() < 0.7 else None,
    }
    present = [v for v in scores.values() if v is not None]
    scores["combined_score"] = round(sum(present) / len(present), 4)
    return scores


def simulate(
    *, seed: int, simulations: int, gold: str = "15", texts: list[str] | None = None
) -> Iterator[tuple[int, list[Node], list[FilteredOption], list[SearchEvent], dict[int, tuple[int, float]]]]:
    """Grow a plausible tree, yielding per simulation: (simulation, new nodes,
    new filtered options, events, {node index: (visits, value_sum)} after backprop).

    Rows carry ``tree_id = 0``; the caller sets it. The root is yielded first as
    simulation -1.
    """
    rng = random.Random(seed)
    texts = texts or _STEP_TEXTS
    root = Node(tree_id=0, index=0, parent_index=-1, depth=0, option_text="", created_simulation=-1)
    # Plain copies: the yielded rows are expired once the caller commits them.
    nodes: dict[int, _Shape] = {0: _Shape(parent=-1, depth=0, terminal=False, text="", tokens=0)}
    children: dict[int, list[int]] = {0: []}
    stats: dict[int, tuple[int, float]] = {0: (0, 0.0)}
    yield -1, [root], [], [], {}
    seq = 0
    for sim in range(simulations):
        events: list[SearchEvent] = []
        open_nodes = [i for i, n in nodes.items() if not n.terminal and n.depth < 5]
        parent = rng.choice(open_nodes[-6:]) if open_nodes else 0
        path = [parent]
        while path[-1] != 0:
            path.append(nodes[path[-1]].parent)
        path.reverse()
        for phase, node_index in (("select", parent), ("expand", parent)):
            events.append(SearchEvent(tree_id=0, simulation=sim, seq=seq, phase=phase, node_index=node_index))
            seq += 1
        new_nodes: list[Node] = []
        for _ in range(rng.randint(1, 3)):
            index = len(nodes)
            depth = nodes[parent].depth + 1
            quality = rng.random()
            terminal = depth >= 3 and rng.random() < 0.4
            answer = (gold if quality > 0.4 else "16") if terminal else None
            text = rng.choice(texts)
            rollout_answer = gold if quality > 0.4 else "16"
            node = Node(
                tree_id=0,
                index=index,
                parent_index=parent,
                depth=depth,
                option_text=text if not terminal else f"The answer is {answer}.",
                token_count=max(1, len(text) // 4),
                logprob_sum=-rng.uniform(1, 20),
                logprob_mean=-rng.uniform(0.1, 2),
                stop_reason="eos" if terminal else "newline",
                prior=round(rng.uniform(0.05, 0.9), 4),
                rollouts=[
                    {
                        "text": f"... so the total is {rollout_answer}.\nThe answer is {rollout_answer}.",
                        "tokens": rng.randint(10, 60),
                        "answer": rollout_answer,
                        "orm": round(rng.uniform(0, 1), 3),
                        "tool": 1.0 if rollout_answer == gold else 0.0,
                    }
                ],
                terminal=terminal,
                answer=answer,
                created_simulation=sim,
                **_scores(rng, quality),
            )
            nodes[index] = _Shape(
                parent=parent, depth=depth, terminal=terminal, text=node.option_text, tokens=1
            )
            children[index] = []
            children[parent].append(index)
            stats[index] = (0, 0.0)
            new_nodes.append(node)
        filtered: list[FilteredOption] = []
        if rng.random() < 0.5:
            sibling = rng.choice(children[parent])
            filtered.append(
                FilteredOption(
                    tree_id=0,
                    parent_index=parent,
                    text=nodes[sibling].text + " ",
                    token_count=nodes[sibling].tokens,
                    similarity=round(rng.uniform(0.951, 0.999), 4),
                    measure="cosine",
                    collided_with_index=sibling,
                    simulation=sim,
                )
            )
            events.append(SearchEvent(tree_id=0, simulation=sim, seq=seq, phase="filter", node_index=parent))
            seq += 1
        leaf = new_nodes[0].index
        value = float(new_nodes[0].combined_score or 0.0)
        for phase in ("evaluate", "rollout"):
            events.append(SearchEvent(tree_id=0, simulation=sim, seq=seq, phase=phase, node_index=leaf))
            seq += 1
        backed = [*path, leaf]
        for index in backed:
            visits, total = stats[index]
            stats[index] = (visits + 1, total + value)
        events.append(
            SearchEvent(
                tree_id=0,
                simulation=sim,
                seq=seq,
                phase="backpropagate",
                node_index=leaf,
                data={"path": backed, "value": value},
            )
        )
        seq += 1
        yield sim, new_nodes, filtered, events, {i: stats[i] for i in backed}


def chosen_path(session: Session, tree_id: int) -> list[int]:
    """Root to leaf by most visits (what "visits" answer selection picks)."""
    rows = session.exec(select(Node).where(Node.tree_id == tree_id)).all()
    kids: dict[int, list[Node]] = {}
    for node in rows:
        kids.setdefault(node.parent_index, []).append(node)
    path = [0]
    while kids.get(path[-1]):
        path.append(max(kids[path[-1]], key=lambda n: (n.visits, -n.index)).index)
    return path


def grow_tree(
    engine: Engine,
    tree_id: int,
    *,
    seed: int,
    simulations: int,
    gold: str | None = "15",
    delay_s: float = 0.0,
    texts: list[str] | None = None,
    finish: bool = True,
) -> None:
    """Write a simulated tree into ``tree_id`` one committed simulation at a time."""
    for sim, new_nodes, filtered, events, touched in simulate(
        seed=seed, simulations=simulations, gold=gold or "15", texts=texts
    ):
        with Session(engine) as session:
            tree = session.get(Tree, tree_id)
            for row in [*new_nodes, *filtered, *events]:
                row.tree_id = tree_id
                session.add(row)
            session.flush()
            for index, (visits, total) in touched.items():
                node = session.exec(select(Node).where(Node.tree_id == tree_id, Node.index == index)).one()
                node.visits = visits
                node.value_sum = total
                node.q = total / visits if visits else 0.0
                session.add(node)
            tree.simulations_done = sim + 1
            tree.node_count += len(new_nodes)
            tree.filtered_count += len(filtered)
            tree.updated_at = utcnow()
            run = session.get(Run, tree.run_id)
            run.heartbeat_at = utcnow()
            session.add_all([tree, run])
            session.commit()
        if delay_s:
            time.sleep(delay_s)
    if not finish:
        return
    with Session(engine) as session:
        tree = session.get(Tree, tree_id)
        path = chosen_path(session, tree_id)
        leaf = session.exec(select(Node).where(Node.tree_id == tree_id, Node.index == path[-1])).one()
        tree.chosen_path = path
        tree.answer = leaf.answer or (leaf.rollouts[0]["answer"] if leaf.rollouts else None)
        tree.answers = {"visits": tree.answer, "vote": tree.answer}
        tree.correct = None if gold is None else tree.answer == gold
        tree.status = "completed"
        tree.updated_at = utcnow()
        session.add(tree)
        session.commit()


def _add(session: Session, row: Any) -> Any:
    session.add(row)
    session.commit()
    session.refresh(row)
    return row


def seed_database(path: Path | None = None, *, url: str | None = None) -> SeedInfo:
    """Create and fill a SQLite store at ``path``, or the empty store at ``url``."""
    url = url or f"sqlite:///{path}"
    engine = make_engine(url)
    info = SeedInfo(url=url, path=path)
    now = utcnow()
    config = {"simulations": 12, "c": 1.0, "selection": "puct", "similarity_threshold": 0.95}
    with Session(engine) as session:
        base = _add(
            session,
            Iteration(
                name="iter-0 (base)",
                model="smollm2-135m",
                status="completed",
                stage="done",
                metrics={  # as the improve loop writes them (store.iterations.IterationMetrics)
                    "accuracy": {"greedy": 0.2, "mcts": 0.35},
                    "data": {"sft_examples": 40, "dpo_examples": 12},
                    "loss": {"sft": 1.8, "value": 0.31},
                },
                created_at=now - timedelta(days=2),
                updated_at=now - timedelta(days=2),
            ),
        )
        second = _add(
            session,
            Iteration(
                parent_id=base.id,
                name="iter-1",
                model="smollm2-135m",
                checkpoint_path="/tmp/ckpt/iter-1",
                status="running",
                stage="searching training prompts",
                metrics={"accuracy": {"greedy": 0.25}, "data": {"sft_examples": 55}, "loss": {"sft": 1.2}},
                created_at=now - timedelta(days=1),
                updated_at=now,
            ),
        )
        info.iteration_ids = [base.id, second.id]
        apples = _add(
            session,
            Problem(
                task="arithmetic",
                index=0,
                question="A farmer has 12 apples, buys 7 more and gives 4 away. How many are left?",
                answer="15",
            ),
        )
        pears = _add(
            session,
            Problem(task="arithmetic", index=1, question="What is 6 * 7 - 2?", answer="40"),
        )
        odd = _add(
            session,
            Problem(
                task="custom",
                question="Ünïcødé <b>bold?</b> **not bold** 日本語: what is 2 + 2?",
                answer=None,
            ),
        )
        runs = {
            "a": Run(
                model="smollm2-135m",
                task="arithmetic",
                status="completed",
                config=config,
                critics={"value": False, "prm": True, "orm": True, "tool": True},
                iteration_id=base.id,
                created_at=now - timedelta(days=2),
                heartbeat_at=now - timedelta(days=2),
                finished_at=now - timedelta(days=2),
                seconds=42.0,
            ),
            "b": Run(
                model="qwen2.5-coder-0.5b",
                task="arithmetic",
                status="completed",
                config=config,
                iteration_id=second.id,
                created_at=now - timedelta(days=1),
                heartbeat_at=now - timedelta(days=1),
                finished_at=now - timedelta(days=1),
                seconds=61.5,
            ),
            "failed": Run(
                model="qwen2.5-coder-0.5b",
                task="arithmetic",
                status="failed",
                error="RuntimeError: policy crashed at simulation 3 (out of memory)",
                config=config,
                created_at=now - timedelta(hours=3),
                heartbeat_at=now - timedelta(hours=3),
            ),
            "stale": Run(
                model="smollm2-135m",
                task="custom",
                status="running",
                config=config,
                created_at=now - timedelta(minutes=10),
                heartbeat_at=now - timedelta(minutes=5),
            ),
        }
        for name, run in runs.items():
            info.run_ids[name] = _add(session, run).id
        stamps = {"created_at": now, "updated_at": now}
        trees = {
            "a1": Tree(run_id=info.run_ids["a"], problem_id=apples.id, simulations_target=12, **stamps),
            "a2": Tree(run_id=info.run_ids["a"], problem_id=pears.id, simulations_target=6, **stamps),
            "b1": Tree(run_id=info.run_ids["b"], problem_id=apples.id, simulations_target=12, **stamps),
            "failed": Tree(
                run_id=info.run_ids["failed"],
                problem_id=pears.id,
                simulations_target=12,
                status="failed",
                **stamps,
            ),
            "stale": Tree(run_id=info.run_ids["stale"], problem_id=odd.id, simulations_target=12, **stamps),
        }
        for name, tree in trees.items():
            info.tree_ids[name] = _add(session, tree).id
    odd_texts = [LONG_OPTION, SCRIPT_OPTION, MARKDOWN_OPTION, UNICODE_OPTION]
    grow_tree(engine, info.tree_ids["a1"], seed=2, simulations=12)
    grow_tree(engine, info.tree_ids["a2"], seed=9, simulations=6, gold="40")
    grow_tree(engine, info.tree_ids["b1"], seed=3, simulations=12)
    grow_tree(engine, info.tree_ids["failed"], seed=4, simulations=0, gold="40", finish=False)
    grow_tree(engine, info.tree_ids["stale"], seed=5, simulations=5, gold=None, texts=odd_texts, finish=False)
    with Session(engine) as session:
        stale_run = session.get(Run, info.run_ids["stale"])
        stale_run.heartbeat_at = now - timedelta(minutes=5)
        session.add(stale_run)
        a1 = info.tree_ids["a1"]
        base_id = info.iteration_ids[0]
        examples = [
            ("sft", {"prompt": "A farmer has 12 apples...", "completion": "12 + 7 = 19\n19 - 4 = 15"}),
            ("sft", {"prompt": "What is 6 * 7 - 2?", "completion": "6 * 7 = 42\n42 - 2 = 40"}),
            ("dpo", {"prompt": "A farmer...", "chosen": "19 - 4 = 15", "rejected": "19 - 4 = 16"}),
            ("value", {"state": "Step 1: 12 apples", "target": 0.7}),
            ("value", {"state": "Step 2: 19", "target": 0.4}),
            ("prm", {"steps": ["12 + 7 = 19"], "label": True}),
            ("orm", {"trajectory": SCRIPT_OPTION, "label": False}),
        ]
        programs = [  # the program checker's evidence for the apples problem
            ("apples = 12 + 7 - 4\nprint(apples)\n```", "ok", "15\n", "", "15"),
            ("print(12 + 7 + 4)\n```", "ok", "23\n", "", "23"),
            ("import os\n```", "error", "", "NotImplementedError: Import not supported", None),
        ]
        for index, (text, status, output, error, verdict) in enumerate(programs):
            session.add(
                VerifierProgram(
                    tree_id=a1,
                    index=index,
                    text=text,
                    tokens=len(text.split()),
                    status=status,
                    output=output,
                    error=error,
                    verdict=verdict,
                )
            )
        for kind, payload in examples:
            session.add(
                TrainingExample(
                    iteration_id=base_id,
                    kind=kind,
                    payload=payload,
                    source_tree_id=a1,
                    source_nodes=[0, 1],
                    created_at=now,
                )
            )
        session.commit()
    engine.dispose()
    return info


def make_old_schema_db(path: Path) -> str:
    """A SQLite file with tables but no schema version (an older Canopy's)."""
    import sqlite3

    with sqlite3.connect(path) as connection:
        for table in ("run", "tree", "node"):
            connection.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY)")
    return f"sqlite:///{path}"


# -- an improve loop's rounds, for the Rounds page ------------------------------------

HELD_OUT = [  # the held-out problems every round evaluates: (question, gold)
    ("A farmer has 12 apples, buys 7 more and gives 4 away. How many are left?", "15"),
    ("What is 6 * 7 - 2?", "40"),
    (
        "A shop sells pens at $3 and *notebooks* at $5. Ann buys 1 pen and 4 notebooks. What does she pay?",
        "23",
    ),
]
MCTS_VERDICTS = [  # per round (base first), per held-out problem; None: no tree (the round is evaluating)
    [False, True, False],
    [True, True, False],
    [True, True, None],
]
GREEDY_VERDICTS = [[False, True, False], [True, True, False], [True, True, True]]


@dataclass
class RoundsSeed:
    """Ids of what ``seed_rounds`` wrote.

    ``chain``: the loop's iterations, base first (round 2 still evaluating: no
    MCTS tree for the third problem). ``waiting``: a newer loop's base that has
    no held-out tree yet. ``mcts``/``greedy``: (round, problem position) -> tree.
    ``training_problem``: searched by round 1's training search, not held out.
    """

    url: str
    chain: list[int] = field(default_factory=list)
    waiting: int = 0
    problems: list[int] = field(default_factory=list)
    training_problem: int = 0
    mcts: dict[tuple[int, int], int] = field(default_factory=dict)
    greedy: dict[tuple[int, int], int] = field(default_factory=dict)


def _reached(node: Node) -> str | None:
    """The answer a node leads to: its own when finished, else its first rollout's."""
    if node.terminal:
        return node.answer
    return node.rollouts[0].get("answer") if node.rollouts else None


def _finish_as(engine: Engine, tree_id: int, *, gold: str, correct: bool, seconds: float) -> None:
    """Finish a grown tree with a chosen path to its deepest node (finished ones
    first) whose answer is right or wrong as asked, so a test knows each verdict."""
    with Session(engine) as session:
        nodes = session.exec(select(Node).where(Node.tree_id == tree_id)).all()
        wanted = [n for n in nodes if n.parent_index >= 0 and (_reached(n) == gold) == correct]
        target = max(wanted, key=lambda n: (n.terminal, n.depth, -n.index))
        parent_of = {n.index: n.parent_index for n in nodes}
        path = [target.index]
        while parent_of[path[-1]] >= 0:
            path.append(parent_of[path[-1]])
        tree = session.get(Tree, tree_id)
        tree.chosen_path = path[::-1]
        tree.answer = _reached(target)
        tree.answers = {"visits": tree.answer}
        tree.correct = correct
        tree.status = "completed"
        tree.generated_tokens = sum(n.token_count + sum(r["tokens"] for r in n.rollouts) for n in nodes)
        tree.seconds = seconds
        tree.updated_at = utcnow()
        session.add(tree)
        session.commit()


def _greedy_tree(
    session: Session, run_id: int, problem_id: int, gold: str, *, correct: bool, tokens: int
) -> int:
    """A greedy evaluation's tree as the baselines store it: the root and one
    finished child holding the whole completion."""
    answer = gold if correct else "16"
    tree = _add(
        session,
        Tree(
            run_id=run_id,
            problem_id=problem_id,
            status="completed",
            node_count=2,
            answer=answer,
            answers={"greedy": answer},
            chosen_path=[0, 1],
            correct=correct,
            generated_tokens=tokens,
            seconds=tokens / 16,
            created_at=utcnow(),
            updated_at=utcnow(),
        ),
    )
    session.add(Node(tree_id=tree.id, index=0, parent_index=-1, depth=0, visits=1))
    session.add(
        Node(
            tree_id=tree.id,
            index=1,
            parent_index=0,
            depth=1,
            option_text=f"{MARKDOWN_OPTION}\nSo the total is {answer}.\nThe answer is {answer}.",
            token_count=tokens,
            stop_reason="eos",
            visits=1,
            terminal=True,
            answer=answer,
        )
    )
    session.commit()
    return tree.id


def seed_rounds(path: Path | None = None, *, url: str | None = None) -> RoundsSeed:
    """A store holding what ``canopy improve --iterations 2 --eval-problems 3``
    writes (no model needed): a base and two rounds, each with a greedy and an
    MCTS evaluation of the same three held-out problems (verdicts
    ``MCTS_VERDICTS``/``GREEDY_VERDICTS``), round 2 still running; and a newer
    loop whose base has begun but evaluated nothing."""
    url = url or f"sqlite:///{path}"
    engine = make_engine(url)
    seed = RoundsSeed(url=url)
    now = utcnow()
    config = {"model": "smollm2-135m", "task": "arithmetic", "iterations": 2, "eval_problems": 3}
    trained = ["search", "mine", "sft", "value", "prm", "orm"]
    with Session(engine) as session:
        seed.problems = [
            _add(session, Problem(task="arithmetic", index=index, question=question, answer=gold)).id
            for index, (question, gold) in enumerate(HELD_OUT)
        ]
        training = _add(
            session, Problem(task="arithmetic", index=100, question="What is 9 + 10?", answer="19")
        )
        seed.training_problem = training_id = training.id
    grown: list[tuple[int, int, str, bool, float]] = []  # tree, seed, gold, correct, seconds
    parent_id = None
    for number, (mcts, greedy) in enumerate(zip(MCTS_VERDICTS, GREEDY_VERDICTS, strict=True)):
        running = None in mcts
        done = (
            ([] if number == 0 else trained) + ["eval_greedy"] + ([] if running else ["eval_mcts", "critics"])
        )
        with Session(engine) as session:
            iteration = _add(
                session,
                Iteration(
                    parent_id=parent_id,
                    name="base" if number == 0 else f"round {number}",
                    model="smollm2-135m",
                    status="running" if running else "completed",
                    stage=f"eval_mcts {mcts.index(None)}/{len(mcts)}" if running else "done",
                    created_at=now - timedelta(hours=6 - number),
                    updated_at=now - timedelta(hours=5 - number),
                ),
            )
            parent_id = iteration.id
            seed.chain.append(iteration.id)
            runs = {}
            for method in ("greedy", "mcts"):
                run = _add(
                    session,
                    Run(
                        kind="eval",
                        method=method,
                        model="smollm2-135m",
                        task="arithmetic",
                        status="running" if running and method == "mcts" else "completed",
                        config={"simulations": 8},
                        iteration_id=iteration.id,
                        created_at=now - timedelta(hours=6 - number),
                        heartbeat_at=now - timedelta(hours=5 - number),
                    ),
                )
                runs[f"eval_{method}"] = run.id
            for position, (problem_id, (_, gold)) in enumerate(zip(seed.problems, HELD_OUT, strict=True)):
                seed.greedy[(number, position)] = _greedy_tree(
                    session,
                    runs["eval_greedy"],
                    problem_id,
                    gold,
                    correct=greedy[position],
                    tokens=40 + 10 * number,
                )
                if mcts[position] is None:
                    continue
                tree = _add(
                    session,
                    Tree(
                        run_id=runs["eval_mcts"],
                        problem_id=problem_id,
                        simulations_target=8,
                        created_at=now,
                        updated_at=now,
                    ),
                )
                seed.mcts[(number, position)] = tree.id
                grown.append((tree.id, 31 * number + position, gold, mcts[position], 20.0 + number))
            if number == 1:
                search = _add(
                    session,
                    Run(kind="eval", model="smollm2-135m", task="arithmetic", status="completed", config={}),
                )
                runs["search"] = search.id
                _add(session, Tree(run_id=search.id, problem_id=training_id, status="completed"))
            graded = [v for v in mcts if v is not None]
            iteration.metrics = IterationMetrics(
                config=config,
                round=number,
                done=done,
                runs=runs,
                accuracy={"greedy": sum(greedy) / len(greedy)}
                | ({} if running else {"mcts": sum(graded) / len(graded)}),
                tokens={"greedy": 40.0 + 10 * number},
            ).to_dict()
            session.add(iteration)
            session.commit()
    for tree_id, tree_seed, gold, correct, seconds in grown:
        texts = [*_STEP_TEXTS[:9], SCRIPT_OPTION, MARKDOWN_OPTION]
        grow_tree(engine, tree_id, seed=tree_seed, simulations=8, gold=gold, texts=texts, finish=False)
        _finish_as(engine, tree_id, gold=gold, correct=correct, seconds=seconds)
    with Session(engine) as session:
        waiting = _add(
            session,
            Iteration(
                name="base",
                model="qwen2.5-coder-0.5b",
                status="running",
                stage="eval_greedy 0/3",
                metrics=IterationMetrics(config={**config, "model": "qwen2.5-coder-0.5b"}).to_dict(),
                created_at=now,
                updated_at=now,
            ),
        )
        seed.waiting = waiting.id
    engine.dispose()
    return seed
