"""How long the studio's Trees page takes to show one large tree from a
PostgreSQL store, next to the same tree in a SQLite store.
Prints one JSON object (also written to ``--out`` when given).

    python bench/studio_render.py [--nodes 5000] [--repeats 5] [--page-repeats 3]
        [--stores sqlite,postgresql] [--postgres URL] [--out FILE]

Grows one synthetic search tree of ``--nodes`` nodes (1-3 children per
simulation, arithmetic option texts, every critic's score, one rollout per node,
near-duplicate siblings filtered, the search events a simulation emits) and
writes it into each store through the engine's own write path
(``engine.persist.StoreSink``, one commit per simulation, as a search does),
with a few human labels. The stores are a SQLite file in a temporary folder and
a fresh database on a throw-away PostgreSQL server from ``tests/postgres.py``
(or the database ``--postgres`` names).

Then, per store, ``--repeats`` times with the page's data caches cleared (the
database engine stays open, as in a running studio; one untimed pass first):
``loaders_s``, the ``app.data`` queries the Trees page makes to show the tree
(runs, trees, the tree's stamp, nodes, filtered options, backups, labels,
programs), ``figure_s``, building its Plotly figure (``app.layout.build_tree_figure``),
and ``total_s``, both. And ``--page-repeats`` times (0 skips it), ``page_s``: one
whole rerun of the Trees page under ``streamlit.testing`` ``AppTest`` (charts,
node table and detail included, the browser excluded), caches cleared.

Keys: ``nodes``, ``filtered``, ``events``, ``simulations``, ``stores`` (per
store: ``write_s``, ``nodes_read`` (the nodes the page read back), ``median``
and ``best`` of each timing above, ``page_shows_tree`` and ``page_exceptions``), then
``postgres_over_sqlite`` (ratio of the medians, per timing), ``goal_ratio``
(1.2), ``meets_goal`` (total_s within the goal), ``cpus`` and ``load_average``.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stores import databases, emit, load_average  # noqa: E402
from engine.answer_selection import AnswerChoice  # noqa: E402
from engine.config import SearchConfig  # noqa: E402
from engine.persist import StoreSink, create_run, create_tree, set_run_status  # noqa: E402
from engine.tree import FilteredRecord, Tree  # noqa: E402
from engine.types import CriticScores, Option, Problem, Rollout, SearchEvent  # noqa: E402
from store.db import make_engine  # noqa: E402
from store.labels import put_label  # noqa: E402

STORES = ("sqlite", "postgresql")
GOAL_RATIO = 1.2
MAIN = Path(__file__).resolve().parents[1] / "app" / "main.py"
QUESTION = (
    "A bakery bakes 24 trays of 12 muffins each morning. It sells 175 muffins before noon and "
    "packs the rest into boxes of 6. How many boxes does it fill?"
)
GOLD = "19"
THINGS = ["muffins", "trays", "boxes", "loaves", "cookies", "customers", "dollars", "hours"]
MAX_DEPTH = 10


def _step_text(rng: random.Random, depth: int) -> str:
    """One reasoning step with arithmetic in it, sometimes long, sometimes wrong."""
    a, b = rng.randint(2, 300), rng.randint(2, 30)
    op, result = rng.choice([("+", a + b), ("-", a - b), ("*", a * b), ("/", a // b)])
    if rng.random() < 0.2:
        result += rng.choice([-2, -1, 1, 3])
    thing = rng.choice(THINGS)
    text = f"Step {depth}: {a} {thing} {op} {b} = {result} {thing}."
    if rng.random() < 0.3:
        text += f" So there are {result} {thing} left to pack, and each box holds {b} of them."
    return text


def _option(rng: random.Random, text: str, finished: bool) -> Option:
    count = max(2, len(text) // 4)
    token_logprobs = tuple(-rng.uniform(0.0, 2.5) for _ in range(count))
    total = sum(token_logprobs)
    return Option(
        text=text,
        token_ids=tuple(rng.randrange(32_000) for _ in range(count)),
        logprob_sum=total,
        logprob_mean=total / count,
        finished=finished,
        stop_reason="eos" if finished else "newline",
        token_logprobs=token_logprobs,
    )


def _scores(rng: random.Random, quality: float) -> CriticScores:
    def noisy(spread: float) -> float:
        return round(min(1.0, max(0.0, quality + rng.uniform(-spread, spread))), 4)

    value, prm, orm = noisy(0.25), noisy(0.35), noisy(0.2)
    tool = noisy(0.1) if rng.random() < 0.7 else None
    present = [score for score in (value, prm, orm, tool) if score is not None]
    return CriticScores(value=value, prm=prm, orm=orm, tool=tool, combined=sum(present) / len(present))


def grow(
    tree: Tree, rng: random.Random, simulation: int, open_nodes: list[int], limit: int
) -> tuple[set[int], list[SearchEvent], list[FilteredRecord]]:
    """One simulation of a plausible search: pick an open node (mostly a recent
    one), give it 1-3 children with scores and a rollout each, maybe filter a
    near-duplicate, back the first child's value up the path. Returns the node
    indices it changed, its events and its filtered options, as a search's step."""
    parent = rng.choice(open_nodes[-40:] if rng.random() < 0.7 else open_nodes)
    path = tree.path(parent)
    events = [SearchEvent(simulation, "select", parent, {"path": path})]
    children = []
    for _ in range(min(rng.randint(1, 3), limit - len(tree.nodes))):
        depth = tree.nodes[parent].depth + 1
        quality = rng.random()
        terminal = depth >= MAX_DEPTH or (depth >= 3 and rng.random() < 0.25)
        answer = (GOLD if quality > 0.4 else str(rng.randint(10, 40))) if terminal else None
        text = f"The answer is {answer}." if terminal else _step_text(rng, depth)
        child = tree.add_child(parent, _option(rng, text, terminal), simulation=simulation)
        child.scores = _scores(rng, quality)
        child.prior = round(rng.uniform(0.05, 0.9), 4)
        child.terminal, child.answer = terminal, answer
        rollout_answer = GOLD if quality > 0.4 else str(rng.randint(10, 40))
        child.rollouts = [
            Rollout(
                text=f"... so {rollout_answer} boxes are filled.\nThe answer is {rollout_answer}.",
                tokens=rng.randint(10, 60),
                answer=rollout_answer,
                orm=round(rng.random(), 3),
                tool=1.0 if rollout_answer == GOLD else 0.0,
            )
        ]
        children.append(child)
        if not terminal:
            open_nodes.append(child.index)
    node = tree.nodes[parent]
    node.expansions += 1
    node.target_width = max(node.target_width, len(node.children))
    if len(node.children) >= 4 and parent in open_nodes:
        open_nodes.remove(parent)
    filtered = []
    if rng.random() < 0.3:
        sibling = rng.choice(node.children)
        record = FilteredRecord(
            parent=parent,
            option=_option(rng, tree.nodes[sibling].option.text + " ", False),
            similarity=round(rng.uniform(0.951, 0.999), 4),
            collided_with=sibling,
            simulation=simulation,
            measure="edit",
        )
        tree.filtered.append(record)
        filtered.append(record)
    kept = [child.index for child in children]
    events.append(SearchEvent(simulation, "expand", parent, {"sampled": len(kept) + len(filtered)}))
    events.append(SearchEvent(simulation, "filter", parent, {"kept": kept, "filtered": len(filtered)}))
    for child in children:
        scores = {"value": child.scores.value, "prm": child.scores.prm, "orm": child.scores.orm}
        events.append(
            SearchEvent(simulation, "evaluate", child.index, {**scores, "combined": child.scores.combined})
        )
        events.append(
            SearchEvent(simulation, "rollout", child.index, {"answers": [child.rollouts[0].answer]})
        )
    value = children[0].scores.combined if children else node.scores.combined
    backed = [*path, children[0].index] if children else path
    for index in backed:
        tree.nodes[index].visits += 1
        tree.nodes[index].value_sum += value
    events.append(SearchEvent(simulation, "backpropagate", backed[-1], {"path": backed, "value": value}))
    tree.simulations_done = simulation + 1
    tree.generated_tokens += sum(len(child.option.token_ids) + child.rollouts[0].tokens for child in children)
    return {*backed, *kept, parent}, events, filtered


def write_tree(url: str, nodes: int, seed: int) -> dict[str, Any]:
    """Grow a ``nodes``-node tree (the same for the same seed) into the store at
    ``url`` one simulation per commit, finish it and label a few of its nodes;
    its ids and sizes, and the seconds writing took."""
    engine = make_engine(url)
    started = time.perf_counter()
    config = SearchConfig(simulations=nodes, seed=seed, similarity="edit")
    run_id = create_run(
        engine,
        model="bench-policy",
        task="arithmetic",
        seed=seed,
        config=config.to_dict(),
        critics={name: {"active": True} for name in ("value", "prm", "orm", "tool")},
    )
    problem = Problem(question=QUESTION, answer=GOLD, task="arithmetic", index=0)
    tree_id = create_tree(engine, run_id=run_id, problem=problem, prompt=QUESTION, simulations=nodes)
    rng = random.Random(seed)
    tree = Tree.new(QUESTION, tuple(rng.randrange(32_000) for _ in range(60)))
    tree.root.scores = CriticScores(combined=0.5)
    sink = StoreSink(engine, tree_id)
    sink.start(tree)
    open_nodes = [0]
    events = 0
    while len(tree.nodes) < nodes and open_nodes:
        simulation = tree.simulations_done
        changed, step_events, filtered = grow(tree, rng, simulation, open_nodes, nodes)
        sink.step_done(
            tree,
            simulations=range(simulation, simulation + 1),
            events=step_events,
            changed=changed,
            filtered=filtered,
        )
        events += len(step_events)
    chosen = tree.root  # down the most visited children, as "visits" answer selection goes
    while chosen.children:
        chosen = max((tree.nodes[index] for index in chosen.children), key=lambda node: node.visits)
    answer = chosen.answer or (chosen.rollouts[0].answer if chosen.rollouts else None)
    choice = AnswerChoice("visits", answer, chosen.index)
    sink.finish(tree, {"visits": choice}, method="visits", gold=GOLD)
    set_run_status(engine, run_id, "completed")
    for index in rng.sample(range(1, len(tree.nodes)), min(40, len(tree.nodes) - 1)):
        verdict = rng.choice(["correct", "incorrect", "unsure"])
        put_label(
            engine, tree_id=tree_id, node_index=index, verdict=verdict, author=rng.choice(["ana", "ben"])
        )
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "tree_id": tree_id,
        "nodes": len(tree.nodes),
        "filtered": len(tree.filtered),
        "events": events,
        "simulations": tree.simulations_done,
        "write_s": round(seconds, 2),
    }


def _quiet_streamlit() -> None:
    """Streamlit warns on every cached call made outside a running app; the
    timings do not need to hear it."""
    import streamlit.logger

    streamlit.logger.set_log_level("error")


def _clear_page_caches() -> None:
    """Forget every query result the Trees page cached, keeping the open engine."""
    from app import data

    for loader in (
        data.runs,
        data.trees,
        data.tree_nodes,
        data.tree_filtered,
        data.tree_backups,
        data.tree_labels,
        data.tree_programs,
    ):
        loader.clear()


def page_pass(url: str, tree_id: int) -> tuple[float, float, int]:
    """What the Trees page does to show tree ``tree_id`` with its node 0
    selected: its queries (``app/views/trees.py``: the store check, runs, trees,
    the tree's nodes, filtered options and backups, labels, programs), then its
    figure. Returns (loader seconds, figure seconds, nodes read back)."""
    from app import data
    from app.components import snapshot_at
    from app.labels import node_marks
    from app.layout import build_tree_figure

    started = time.perf_counter()
    data.store_problem(url)
    trees = data.trees(url)
    data.runs(url)
    tree = trees[trees["id"] == tree_id].iloc[0]
    snapshot, _, _ = snapshot_at(url, tree_id, None)
    labels = data.tree_labels(url, tree_id, data.labels_stamp(url))
    data.tree_programs(url, tree_id, data.tree_stamp(url, tree_id))
    loaded = time.perf_counter()
    build_tree_figure(
        snapshot,
        color_by="combined",
        chosen_path=[int(i) for i in tree["chosen_path"]],
        selected=0,
        show_filtered=True,
        height=560,
        marks=node_marks(labels),
    )
    return loaded - started, time.perf_counter() - loaded, len(snapshot.nodes)


def time_loaders(url: str, tree_id: int, repeats: int) -> tuple[dict[str, list[float]], int]:
    """``page_pass`` ``repeats`` times with the caches cleared before each, after
    one untimed pass; the seconds, and how many nodes the page read back."""
    _clear_page_caches()
    _, _, nodes = page_pass(url, tree_id)
    times: dict[str, list[float]] = {"loaders_s": [], "figure_s": [], "total_s": []}
    for _ in range(repeats):
        _clear_page_caches()
        loaders, figure, _ = page_pass(url, tree_id)
        times["loaders_s"].append(loaders)
        times["figure_s"].append(figure)
        times["total_s"].append(loaders + figure)
    return times, nodes


def time_page(url: str, tree_id: int, repeats: int) -> tuple[list[float], bool, list[str]]:
    """Whole reruns of the Trees page under ``AppTest`` showing tree ``tree_id``
    (``CANOPY_DB`` set to ``url``), caches cleared before each, after one untimed
    run; the seconds, whether the page showed that tree, and any exception it raised."""
    from streamlit.testing.v1 import AppTest

    before = os.environ.get("CANOPY_DB")
    os.environ["CANOPY_DB"] = url
    try:
        app = AppTest.from_file(str(MAIN), default_timeout=600)
        app.session_state["focus"] = {"tree_id": tree_id, "node": 0}
        app.run()
        app.switch_page("views/trees.py")
        app.run()
        _quiet_streamlit()  # AppTest set Streamlit's own log level again
        times = []
        for _ in range(repeats):
            _clear_page_caches()
            started = time.perf_counter()
            app.run()
            times.append(time.perf_counter() - started)
        shown = [box.value for box in app.selectbox if box.key == "trees.tree"] == [tree_id]
        return times, shown, [str(error.value) for error in app.exception]
    finally:
        if before is None:
            os.environ.pop("CANOPY_DB", None)
        else:
            os.environ["CANOPY_DB"] = before


def summary(times: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(times), 4), "best": round(min(times), 4)}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    kinds = [kind.strip() for kind in args.stores.split(",") if kind.strip()]
    unknown = sorted(set(kinds) - set(STORES))
    if unknown:
        raise SystemExit(f"unknown store(s) {', '.join(unknown)}; choose from {', '.join(STORES)}")
    _quiet_streamlit()
    load_start = load_average()
    stores: dict[str, dict[str, Any]] = {}
    written: dict[str, Any] = {}
    with databases(args.postgres) as new_database:
        for kind in kinds:
            url = new_database(kind)
            written = write_tree(url, args.nodes, args.seed)
            times, nodes_read = time_loaders(url, written["tree_id"], args.repeats)
            result = {
                "write_s": written["write_s"],
                "nodes_read": nodes_read,
                **{name: summary(values) for name, values in times.items()},
            }
            if args.page_repeats > 0:
                page_times, shown, exceptions = time_page(url, written["tree_id"], args.page_repeats)
                result["page_s"] = summary(page_times)
                result["page_shows_tree"] = shown
                result["page_exceptions"] = exceptions
            stores[kind] = result
    report: dict[str, Any] = {
        "benchmark": "studio_render",
        "nodes": written.get("nodes"),
        "filtered": written.get("filtered"),
        "events": written.get("events"),
        "simulations": written.get("simulations"),
        "repeats": args.repeats,
        "page_repeats": args.page_repeats,
        "stores": stores,
    }
    if {"sqlite", "postgresql"} <= set(stores):
        ratios = {
            name: round(stores["postgresql"][name]["median"] / stores["sqlite"][name]["median"], 3)
            for name in ("loaders_s", "figure_s", "total_s", "page_s")
            if name in stores["sqlite"]
        }
        report["postgres_over_sqlite"] = ratios
        report["goal_ratio"] = GOAL_RATIO
        report["meets_goal"] = ratios["total_s"] <= GOAL_RATIO
    report["cpus"] = os.cpu_count()
    report["load_average"] = {"start": load_start, "end": load_average()}
    return report


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000, help="Nodes of the tree.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed passes of the loaders and figure.")
    parser.add_argument("--page-repeats", type=int, default=3, help="Timed AppTest reruns (0: none).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stores", default="sqlite,postgresql", help="Comma-separated: sqlite, postgresql.")
    parser.add_argument(
        "--postgres", help="A PostgreSQL database URL to use instead of a throw-away server's."
    )
    parser.add_argument("--out", help="Also write the JSON here.")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    if args.nodes < 2 or args.repeats < 1 or args.page_repeats < 0:
        raise SystemExit("--nodes must be >= 2, --repeats >= 1 and --page-repeats >= 0")
    return emit(measure(args), args.out)


if __name__ == "__main__":
    main()
