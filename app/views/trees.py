"""Trees: find a tree, draw it, replay its growth, inspect any node; compare two trees."""

import json
import time
from datetime import date

import pandas as pd
import streamlit as st

from app import data, links
from app.components import (
    FOCUS,
    color_picker,
    node_detail,
    node_table,
    require_store,
    run_message,
    select_node,
    selected_index,
    snapshot_at,
    tree_chart,
    tree_summary,
    untrusted,
)
from app.labels import label_panel, node_marks
from app.layout import COLOR_BY

FILTER_KEYS = (
    "trees.f.run",
    "trees.f.model",
    "trees.f.task",
    "trees.f.result",
    "trees.f.iteration",
    "trees.f.dates",
)
RESULTS = {"correct": True, "wrong": False, "not graded": None}
TABS = {"explore": "Explore one tree", "compare": "Compare two trees side by side"}
PLAY_SECONDS = 0.8  # how long each simulation stays on screen while the replay plays

url = data.db_url()
st.title("Trees")
st.caption(
    "Each tree is one search over one problem. The root is the question; every other node is one reasoning "
    "step (an *option*) written by the model. Bigger nodes were visited more often; the orange line is the "
    "path to the chosen answer; hollow grey circles on dashed lines are options dropped as near-duplicates."
)
require_store(url)
all_trees = data.trees(url)
runs = data.runs(url)
if all_trees.empty:
    st.info(
        "No trees yet — start a search on the **Search** page or click **Run a demo search** on **Home**."
    )
    st.stop()


def _color(text: str) -> str:
    if text not in COLOR_BY:
        raise ValueError(text)
    return text


def _node(text: str) -> None:
    if (tree_id := st.session_state.get("trees.tree")) is not None:
        select_node(int(tree_id), int(text))


def _tab(text: str) -> str:
    return TABS[text] if text in TABS else TABS["explore"]


LINK = [  # the URL of this page: /trees?tree=3&node=7&color=q&tab=explore&run=1,2 ...
    links.key_param("tree", "trees.tree", int),
    links.Param(
        "node",
        lambda: (
            selected_index(int(st.session_state["trees.tree"])) if "trees.tree" in st.session_state else None
        ),
        _node,
    ),
    links.key_param("color", "trees.color", _color),
    links.Param(
        "tab",
        lambda: next(
            (name for name, label in TABS.items() if label == st.session_state.get("trees.tabs")), None
        ),
        lambda text: st.session_state.__setitem__("trees.tabs", _tab(text)),
    ),
    links.list_param("run", "trees.f.run", int),
    links.list_param("model", "trees.f.model"),
    links.list_param("task", "trees.f.task"),
    links.list_param("result", "trees.f.result"),
]
links.restore("trees", LINK)

if (focus := st.session_state.pop(FOCUS, None)) is not None:
    for key in FILTER_KEYS:
        st.session_state.pop(key, None)
    st.session_state["trees.tree"] = focus["tree_id"]
    select_node(focus["tree_id"], focus["node"])
    st.session_state["trees.tabs"] = TABS["explore"]


def filtered_trees(trees: pd.DataFrame) -> pd.DataFrame:
    with st.expander("Filter runs and trees", icon=":material/filter_list:"):
        columns = st.columns(3)
        run_ids = columns[0].multiselect(
            "Run",
            runs["id"].tolist(),
            key="trees.f.run",
            format_func=lambda i: data.run_label(runs[runs["id"] == i].iloc[0]),
        )
        models = columns[1].multiselect("Model", sorted(trees["model"].unique()), key="trees.f.model")
        tasks = columns[2].multiselect("Task", sorted(trees["task"].unique()), key="trees.f.task")
        columns = st.columns(3)
        results = columns[0].multiselect(
            "Result",
            list(RESULTS),
            key="trees.f.result",
            help="Whether the search's answer matched the gold answer.",
        )
        iteration_ids = sorted({int(i) for i in trees["iteration_id"].dropna()})
        iteration_names = dict(zip(runs["iteration_id"], runs["iteration"], strict=False))
        iterations = columns[1].multiselect(
            "Self-improvement iteration",
            iteration_ids,
            key="trees.f.iteration",
            format_func=lambda i: f"{i}: {iteration_names.get(i) or ''}",
        )
        dates = [c.date() for c in trees["created_at"] if data.present(c)]
        span = columns[2].date_input(
            "Created between", value=(min(dates), max(dates)) if dates else (), key="trees.f.dates"
        )
    keep = pd.Series(True, index=trees.index)
    if run_ids:
        keep &= trees["run_id"].isin(run_ids)
    if models:
        keep &= trees["model"].isin(models)
    if tasks:
        keep &= trees["task"].isin(tasks)
    if results:
        wanted = {RESULTS[r] for r in results}
        keep &= trees["correct"].map(lambda c: (bool(c) if data.present(c) else None) in wanted)
    if iterations:
        keep &= trees["iteration_id"].isin(iterations)
    if isinstance(span, tuple) and len(span) == 2 and all(isinstance(d, date) for d in span):
        keep &= trees["created_at"].map(lambda c: data.present(c) and span[0] <= c.date() <= span[1])
    return trees[keep]


def export_buttons(tree_id: int, color_by: str) -> None:
    """The whole tree as JSON (nodes, edges, scores) or as an SVG for a paper,
    made only when clicked."""
    from app.layout import document_figure
    from store.tree_export import tree_document

    def document() -> dict:
        return tree_document(data.engine(url), tree_id)

    left, right = st.columns(2)
    left.download_button(
        "Tree as JSON",
        data=lambda: json.dumps(document(), indent=1),
        file_name=f"tree-{tree_id}.json",
        mime="application/json",
        icon=":material/data_object:",
        key=f"trees.export.json.{tree_id}",
        help="Every node with its text, visits, Q, critic scores and rollouts; the edges; "
        "the filtered siblings.",
    )
    right.download_button(
        "Tree as SVG",
        data=lambda: document_figure(document(), color_by=color_by).to_image(format="svg"),
        file_name=f"tree-{tree_id}-{color_by}.svg",
        mime="image/svg+xml",
        icon=":material/image:",
        key=f"trees.export.svg.{tree_id}",
        help="The tree as drawn (coloured by the chosen critic), as a vector image. Takes a few seconds.",
    )


shown = filtered_trees(all_trees)
st.caption(f"{len(shown)} of {len(all_trees)} trees match the filters.")
if shown.empty:
    st.info("No tree matches these filters — clear some of them above.")
    st.stop()


def pick_tree(label: str, options: pd.DataFrame, key: str, index: int = 0) -> pd.Series:
    ids = options["id"].tolist()
    if st.session_state.get(key) not in ids:
        st.session_state.pop(key, None)
    # The first draw picks `index`; later draws keep the user's pick (passing both warns).
    position = {} if key in st.session_state else {"index": min(index, len(ids) - 1)}
    tree_id = st.selectbox(
        label,
        ids,
        key=key,
        format_func=lambda i: data.tree_label(options[options["id"] == i].iloc[0]),
        **position,
    )
    return options[options["id"] == tree_id].iloc[0]


def replay_controls(tree_id: int, done: int) -> int:
    """A simulation slider with Play/Pause; the simulation to draw the tree after."""
    sim_key, play_key = f"trees.sim.{tree_id}", f"trees.playing.{tree_id}"
    pending = st.session_state.pop(f"{sim_key}.next", None)
    if pending is not None:  # the next frame of a playing replay (set before the slider exists)
        st.session_state[sim_key] = pending
    if sim_key not in st.session_state:
        st.session_state[sim_key] = done - 1

    def toggle_play() -> None:
        playing = not st.session_state.get(play_key, False)
        st.session_state[play_key] = playing
        if playing and st.session_state[sim_key] >= done - 1:
            st.session_state[sim_key] = 0  # played to the end before: start over

    slider, button = st.columns([6, 1], vertical_alignment="bottom")
    upto = slider.slider("Show the tree after simulation", 0, done - 1, key=sim_key)
    if upto >= done - 1:
        st.session_state[play_key] = False
    playing = st.session_state.get(play_key, False)
    button.button(
        "Pause" if playing else "Play",
        icon=":material/pause:" if playing else ":material/play_arrow:",
        key=f"{play_key}.button",
        on_click=toggle_play,
        help="Step through the simulations, one every second or so.",
    )
    return upto


def advance_replay(tree_id: int, upto: int | None) -> None:
    """While a replay plays, wait a moment and rerun showing the next simulation."""
    if upto is None or not st.session_state.get(f"trees.playing.{tree_id}", False):
        return
    time.sleep(PLAY_SECONDS)
    st.session_state[f"trees.sim.{tree_id}.next"] = upto + 1
    st.rerun()


def explore(tree: pd.Series) -> None:
    tree_id = int(tree["id"])
    run = runs[runs["id"] == tree["run_id"]].iloc[0]
    st.caption(f"Run {run['id']} · {run['model']} · task {tree['task']} · run status: {run['shown_state']}")
    run_message(run["state"], run["error"])
    st.caption("Question")
    untrusted(tree["question"])
    tree_summary(tree, tree["status"])
    controls = st.columns([3, 1, 2], vertical_alignment="bottom")
    with controls[0]:
        color_by = color_picker("trees.color")
    show_filtered = controls[1].toggle(
        "Show filtered",
        value=True,
        key="trees.show_filtered",
        help="Draw the near-duplicate options the similarity filter dropped.",
    )
    done = int(tree["simulations_done"])
    with controls[2]:
        replaying = done > 1 and st.toggle(
            "Replay growth",
            key=f"trees.replay.{tree_id}",
            help="Show the tree as it stood after an earlier simulation.",
        )
    upto = replay_controls(tree_id, done) if replaying else None
    snapshot, nodes, filtered = snapshot_at(url, tree_id, upto)
    if len(nodes) <= 1:
        st.info("This tree has only its root: the search stopped before it expanded the question.")
    chosen = [int(i) for i in (tree["chosen_path"] or [])]
    left, right = st.columns([3, 2])
    with left:
        tree_chart(
            snapshot,
            tree_id=tree_id,
            key=f"trees.chart.{tree_id}.{upto}",
            color_by=color_by,
            chosen_path=chosen,
            show_filtered=show_filtered,
            marks=node_marks(data.tree_labels(url, tree_id, data.labels_stamp(url))),
        )
        st.caption(
            "Click a node to inspect it (drag to pan, scroll to zoom, double-click to reset). "
            "The camera icon above the chart saves this view as a PNG."
        )
        export_buttons(tree_id, color_by)
    with right, st.container(border=True, height=540):
        programs = data.tree_programs(url, tree_id, data.tree_stamp(url, tree_id))
        index = selected_index(tree_id)
        node_detail(tree, snapshot.nodes, snapshot.filtered, index, programs)
    if index in set(snapshot.nodes["index"]) and index != 0:
        with right, st.container(border=True):  # under the scrolling detail, always in view
            label_panel(url, tree_id, index, key=f"trees.label.{tree_id}", shortcuts=True)
    with st.expander(f"All {len(snapshot.nodes)} nodes as a table — click a row to inspect it"):
        node_table(snapshot.nodes, tree_id=tree_id, key=f"trees.table.{tree_id}.{upto}", chosen_path=chosen)
    advance_replay(tree_id, upto)


def compare() -> None:
    counts = shown.groupby("problem_id")["id"].count().sort_values(ascending=False)
    st.caption(
        "Pick a problem, then two of its trees: for example the same problem searched by two "
        "self-improvement "
        "iterations, or with two settings."
    )
    questions = dict(zip(shown["problem_id"], shown["question"], strict=False))
    problem_id = st.selectbox(
        "Problem",
        counts.index.tolist(),
        key="trees.cmp.problem",
        format_func=lambda p: f"{counts[p]} tree(s) · " + " ".join(str(questions[p]).split())[:90],
    )
    options = shown[shown["problem_id"] == problem_id]
    if len(options) < 2:
        st.info("Only one tree on this problem matches the filters — pick a problem with two or more trees.")
    color_by = color_picker("trees.cmp.color")
    for side, column in enumerate(st.columns(2)):
        with column, st.container(border=True):
            tree = pick_tree(f"Tree {'AB'[side]}", options, f"trees.cmp.tree{side}", index=side)
            run = runs[runs["id"] == tree["run_id"]].iloc[0]
            st.caption(f"Run {run['id']} · {run['model']} · iteration {run['iteration'] or '–'}")
            tree_summary(tree, compact=True)
            snapshot, _, _ = snapshot_at(url, int(tree["id"]), None)
            tree_chart(
                snapshot,
                tree_id=int(tree["id"]),
                key=f"trees.cmp.chart{side}",
                color_by=color_by,
                chosen_path=[int(i) for i in (tree["chosen_path"] or [])],
                height=440,
                selectable=False,
            )


explore_tab, compare_tab = st.tabs(list(TABS.values()), key="trees.tabs")
with explore_tab:
    finished = [i for i, status in enumerate(shown["status"]) if status == "completed"]
    explore(pick_tree("Tree", shown, "trees.tree", index=finished[0] if finished else 0))
with compare_tab:
    compare()
links.publish("trees", LINK)
