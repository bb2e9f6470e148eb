"""One round's column on the Rounds page: its accuracy on the held-out set, its
MCTS tree for the chosen problem (verdict, answer, cost, a compact chart and the
critics along the chosen path) and its greedy answer. Every control that opens
a node records it under ``OPEN``; the page opens it at the end of its run.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from app.chains import GREEDY, MCTS, Round, accuracy, path_verdicts, tree_of, verdict
from app.components import snapshot_at, untrusted
from app.layout import TreeSnapshot, build_tree_figure, selected_node

OPEN = "rounds.open"
"""Session key: (tree id, node) to open on the Trees page at the end of the run."""
VERDICTS = {True: ("✓ correct", "green"), False: ("✗ wrong", "red"), None: ("not graded", "gray")}
SCORE_HEADERS = {  # the path table's score columns: (header, what it judges); narrow headers, full help
    "value": ("value", "Value function: the expected final reward from this partial solution."),
    "PRM": ("PRM", "Process reward model: the probability that this step is correct."),
    "ORM": ("ORM", "Outcome reward model: the probability that a finished solution through it is right."),
    "tool": ("tool", "A checker's verdict: recomputed arithmetic, or the share of programs that agree."),
    "combined": ("comb.", "Combined: the critics' weighted mean, the value the search backs up."),
    "Q": ("Q", "Mean backed-up value over the step's visits."),
}


@dataclass(frozen=True)
class ProblemView:
    """What every column shares.

    Attributes:
        url: the store.
        trees: the loop's held-out trees (``app.data.round_trees``).
        problem_id: the problem shown.
        color_by: a key of ``app.layout.COLOR_BY``.
    """

    url: str
    trees: pd.DataFrame
    problem_id: int
    color_by: str


def _open_later(tree_id: int, node: int) -> None:
    st.session_state[OPEN] = (int(tree_id), int(node))


def _percent(share: float | None) -> str:
    return f"{share:.0%}" if share is not None else "–"


def _badge(tree: pd.Series) -> None:
    """The tree's verdict as a coloured label."""
    text, color = VERDICTS[verdict(tree)]
    st.badge(text, color=color)


def _change(delta: str | None, *, better: str = "down", instead: str = "–") -> dict:
    """A metric's change from the column to the left; where there is none, a grey
    ``instead`` ("–", "so far"), so every column's metrics take the same height and
    the charts line up."""
    if delta is None:
        return {"delta": instead, "delta_color": "off", "delta_arrow": "off"}
    return {"delta": delta, "delta_color": "normal" if better == "up" else "inverse"}


def accuracy_metrics(view: ProblemView, step: Round, before: Round | None) -> None:
    """The round's accuracy on the whole held-out set and its change from the
    column to the left. An evaluation still running has graded only some problems:
    its share is marked "so far" (the overview table gives the counts) and not
    compared, since it is not yet like for like."""
    columns = st.columns(2)
    for column, (name, key, run_id, earlier) in zip(
        columns,
        [
            ("MCTS accuracy", MCTS, step.mcts_run, before.mcts_run if before else None),
            ("Greedy accuracy", GREEDY, step.greedy_run, before.greedy_run if before else None),
        ],
        strict=True,
    ):
        share, correct, graded = accuracy(view.trees, run_id)
        previous = accuracy(view.trees, earlier)[0]
        partial = run_id is not None and not step.finished(key)
        compared = share is not None and previous is not None and not partial
        column.metric(
            name,
            _percent(share),
            **_change(
                f"{(share - previous) * 100:+.0f} pts" if compared else None,
                better="up",
                instead="so far" if partial else "–",
            ),
            help=f"{correct} of {graded} graded held-out problems right"
            + (" so far (the evaluation has not finished)." if partial else ".")
            + (f" The change is from {before.title}." if compared else ""),
        )


def missing_tree(step: Round) -> None:
    """Why a round has no MCTS tree for this problem, and what to do about it."""
    if step.status == "running":
        where = f"it is at stage {step.stage}"
    else:
        where = {"failed": "it failed", "interrupted": "it was interrupted"}.get(step.status, step.status)
    if step.mcts_run is None:
        st.info(f"No tree: this round has not begun its held-out MCTS evaluation ({where}).")
    else:
        yet = " yet" if step.status == "running" else ""
        st.info(f"No tree for this problem{yet}: the round's MCTS evaluation has not reached it ({where}).")
    if step.error:
        st.caption("The error that stopped it")
        untrusted(step.error)
    if step.status in ("failed", "interrupted"):
        st.caption("Continue the loop with")
        st.code(f"canopy improve --resume {step.iteration_id}", language=None)


def compact_chart(view: ProblemView, snapshot: TreeSnapshot, tree: pd.Series, key: str) -> None:
    """The round's tree, small: no legend or colour bar (the caption above says what colour means);
    clicking a node opens it on the Trees page."""
    tree_id = int(tree["id"])
    figure = build_tree_figure(
        snapshot,
        color_by=view.color_by,
        chosen_path=[int(i) for i in (tree["chosen_path"] or [])],
        show_filtered=False,
        height=320,
    )
    figure.update_layout(showlegend=False, margin={"l": 0, "r": 0, "t": 10, "b": 0})
    figure.update_traces(marker={"showscale": False}, selector={"mode": "markers"})

    def clicked() -> None:
        index = selected_node(st.session_state.get(key))
        if index is not None:
            _open_later(tree_id, index)

    st.plotly_chart(
        figure,
        key=key,
        on_select=clicked,
        selection_mode="points",
        config={"displaylogo": False, "scrollZoom": True, "displayModeBar": False},
    )


def mcts_tree(view: ProblemView, tree: pd.Series, before: pd.Series | None) -> None:
    """Verdict, answer, cost, the compact tree and the critics along its chosen path."""
    tree_id = int(tree["id"])
    _badge(tree)
    st.caption("Answer chosen by the search")
    untrusted(tree["answer"], empty="(no answer)")
    tokens, seconds = int(tree["generated_tokens"]), float(tree["seconds"])
    columns = st.columns(2)
    columns[0].metric(
        "Tokens",
        f"{tokens:,}",
        **_change(f"{tokens - int(before['generated_tokens']):+,}" if before is not None else None),
        help="Tokens the policy generated for this problem (options and rollouts).",
    )
    columns[1].metric(
        "Seconds",
        f"{seconds:.1f}",
        **_change(f"{seconds - float(before['seconds']):+.1f}" if before is not None else None),
        help="Wall-clock time of this problem's search.",
    )
    simulations = f"{tree['simulations_done']}/{tree['simulations_target']}"
    st.caption(f"Tree {tree_id} · {tree['node_count']} nodes · {simulations} simulations")
    snapshot, nodes, _ = snapshot_at(view.url, tree_id, None)
    compact_chart(view, snapshot, tree, f"rounds.chart.{tree_id}")
    path = [int(i) for i in (tree["chosen_path"] or [])]
    st.button(
        "Open in Trees",
        key=f"rounds.open.{tree_id}",
        icon=":material/account_tree:",
        on_click=_open_later,
        args=(tree_id, path[-1] if path else 0),
        help="This tree on the Trees page, at the end of the chosen path.",
    )
    st.caption("Critics along the chosen path (click a row to open that step)")
    steps = path_verdicts(nodes, path)
    if steps.empty:
        st.caption("(the search chose no step)")
        return
    table_key = f"rounds.path.{tree_id}"

    def picked() -> None:
        rows = st.session_state[table_key].selection.rows
        if rows:
            _open_later(tree_id, int(steps.iloc[rows[0]]["node"]))

    st.dataframe(
        steps,
        key=table_key,
        on_select=picked,
        selection_mode="single-row",
        hide_index=True,
        column_order=[name for name in steps.columns if name != "node"],
        column_config={
            "step": st.column_config.TextColumn(width=110, pinned=True),
            **{
                column: st.column_config.NumberColumn(label, format="%.2f", width=42, help=meaning)
                for column, (label, meaning) in SCORE_HEADERS.items()
            },
        },
    )


def greedy_answer(view: ProblemView, step: Round) -> None:
    """The round's greedy answer (no search) to the same problem, where it ran greedy."""
    yet = " yet" if step.status == "running" else ""
    if step.greedy_run is None:
        st.caption(f"Greedy: this round has no greedy evaluation{yet}")
        return
    tree = tree_of(view.trees, step.greedy_run, view.problem_id)
    if tree is None:
        st.caption(f"Greedy: no answer to this problem{yet}")
        return
    cost = f"{int(tree['generated_tokens']):,} tokens · {tree['seconds']:.1f} s"
    st.caption(f"Greedy answer (no search) · {cost}")
    _badge(tree)
    untrusted(tree["answer"], empty="(no answer)")
    path = [int(i) for i in (tree["chosen_path"] or [])]
    st.button(
        "Open greedy answer in Trees",
        key=f"rounds.open.{int(tree['id'])}",
        icon=":material/account_tree:",
        on_click=_open_later,
        args=(int(tree["id"]), path[-1] if path else 0),
        help="The greedy completion on the Trees page: one node holding the whole answer.",
    )


def round_column(view: ProblemView, step: Round, before: Round | None) -> None:
    """One round's column; ``before`` is the round in the column to its left."""
    st.markdown(f"#### {step.title}")
    state = step.status if step.status != "running" else f"running: {step.stage}"
    st.caption(f"Iteration {step.iteration_id} · {step.name or '–'} · {state}")
    accuracy_metrics(view, step, before)
    st.divider()
    tree = tree_of(view.trees, step.mcts_run, view.problem_id)
    if tree is None:
        missing_tree(step)
    else:
        earlier = tree_of(view.trees, before.mcts_run, view.problem_id) if before else None
        mcts_tree(view, tree, earlier)
    st.divider()
    greedy_answer(view, step)
