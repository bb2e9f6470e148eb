"""Rounds: one held-out problem across an improve loop's rounds, side by side.

Every round of ``canopy improve`` evaluates the same held-out problems, so the
base model's tree for a problem and each later round's tree for it answer one
question: did training change how the search solves it, and which critic saw it?
"""

import pandas as pd
import streamlit as st

from app import data, links
from app.chains import GREEDY, MCTS, Chain, Round, accuracy, chains, problem_label, problems, tree_of, verdict
from app.components import color_picker, open_in_trees, require_store, untrusted
from app.layout import COLOR_BY
from app.round_column import OPEN, VERDICTS, ProblemView, round_column

PER_ROW = 3  # columns side by side (a fourth leaves no room for the critics' table); more wrap

url = data.db_url()
st.title("Rounds")
st.caption(
    "One held-out problem in every round of a self-improvement loop: the base model's search tree, then "
    "each trained round's, side by side, with its answer, its cost and what the critics said along the "
    "chosen path. Every round evaluates the same held-out problems, so the columns differ only by the "
    "model and critics that round trained."
)
require_store(url)
all_chains = chains(data.iterations(url))
if not all_chains:
    st.info(
        "No self-improvement iterations yet. Start a loop on the **Improve** page, or run "
        "`canopy improve --model smollm2-135m --task arithmetic --iterations 2 --eval-problems 20`: "
        "each round evaluates the same held-out problems, and every round becomes a column here."
    )
    st.stop()
by_id = {chain.base_id: chain for chain in all_chains}


def _changed_param() -> links.Param:
    """The toggle as ``changed=1`` (absent when off)."""
    return links.Param(
        "changed",
        lambda: "1" if st.session_state.get("rounds.changed") else None,
        lambda text: st.session_state.__setitem__("rounds.changed", text in ("1", "true")),
        lambda: "rounds.changed" in st.session_state,
    )


def _color(text: str) -> str:
    if text not in COLOR_BY:
        raise ValueError(text)
    return text


LINK = [  # /rounds?chain=1&problem=4&rounds=0,2&color=prm&changed=1
    links.key_param("chain", "rounds.chain", int),
    links.key_param("problem", "rounds.problem", int),
    links.list_param("rounds", "rounds.shown", int),
    links.key_param("color", "rounds.color", _color),
    _changed_param(),
]
links.restore("rounds", LINK)
LOOP_LINK = [param for param in LINK if param.name in ("chain", "changed")]
"""The link of a view that stops before the problem picker: only what it drew."""


def _keep_if_among(key: str, options: list, first: int = 0) -> dict:
    """Start a selectbox on option ``first`` unless the session (a link, an
    earlier pick) already holds one of ``options`` (passing both warns)."""
    if st.session_state.get(key) in options:
        return {}
    st.session_state.pop(key, None)
    return {"index": first}


# One query for every loop's held-out trees; each view below keeps its own runs' rows.
trees = data.round_trees(url, tuple(sorted({run for chain in all_chains for run in chain.run_ids()})))
with_trees = [i for i, chain in by_id.items() if trees["run_id"].isin(chain.run_ids()).any()]
top = st.columns([3, 2], vertical_alignment="bottom")
chain_id = top[0].selectbox(
    "Self-improvement loop",
    list(by_id),
    key="rounds.chain",
    format_func=lambda i: by_id[i].label,
    help="One `canopy improve` loop: its base evaluation and the rounds after it, newest loop first. "
    "The page opens on the newest loop that has evaluated a held-out problem.",
    **_keep_if_among("rounds.chain", list(by_id), list(by_id).index(with_trees[0]) if with_trees else 0),
)
chain: Chain = by_id[chain_id]
changed_only = top[1].toggle(
    "Only problems whose result changed",
    key="rounds.changed",
    help="Keep the problems that some round solved and another did not (by the MCTS answer).",
)
held_out = problems(trees, chain)
if held_out.empty:
    first = chain.rounds[0]
    st.info(
        f"This loop has no held-out trees yet: its base round is {first.status}"
        + (f" (stage: {first.stage})" if first.stage else "")
        + ". Columns appear as soon as its base evaluation has searched a problem; the **Improve** page "
        "follows its progress."
    )
    links.publish("rounds", LOOP_LINK)
    st.stop()
if changed_only:
    held_out = held_out[held_out["changed"]]
if held_out.empty:
    st.info("No held-out problem changed result between these rounds; turn the filter off to see them all.")
    links.publish("rounds", LOOP_LINK)
    st.stop()
labels = {int(row["problem_id"]): problem_label(row) for _, row in held_out.iterrows()}
problem_id = st.selectbox(
    f"Held-out problem ({len(held_out)})",
    list(labels),
    key="rounds.problem",
    format_func=labels.get,
    help="Task index · the MCTS result in each round, base first (✓ correct, ✗ wrong, ? not graded, "
    "– no tree) · the question.",
    **_keep_if_among("rounds.problem", list(labels)),
)
problem = held_out[held_out["problem_id"] == problem_id].iloc[0]

numbers = [r.number for r in chain.rounds]
if "rounds.shown" in st.session_state:  # from a link or an earlier pick: only this loop's rounds
    st.session_state["rounds.shown"] = [n for n in st.session_state["rounds.shown"] if n in numbers]
evaluated = chain.evaluated(trees)  # not empty: the loop has held-out trees
default = evaluated if len(evaluated) <= PER_ROW else [evaluated[0], *evaluated[-(PER_ROW - 1) :]]
controls = st.columns([3, 2], vertical_alignment="bottom")
shown_numbers = controls[0].multiselect(
    "Rounds to show",
    numbers,
    key="rounds.shown",
    format_func=lambda n: chain.rounds[numbers.index(n)].title,
    help=f"At first every round that has evaluated held-out problems, or the first and the last "
    f"{PER_ROW - 1} of them when there are more. {PER_ROW} fit side by side; more wrap to a new row.",
    **({} if "rounds.shown" in st.session_state else {"default": default}),
)
with controls[1]:
    color_by = color_picker("rounds.color")

st.caption("Question")
untrusted(problem["question"])


def overview() -> None:
    """This problem in every round of the loop as one table (also the rounds not drawn below)."""
    rows = []
    for step in chain.rounds:
        tree, greedy = tree_of(trees, step.mcts_run, problem_id), tree_of(trees, step.greedy_run, problem_id)
        rows.append(
            {
                "round": step.title,
                "MCTS result": _result(tree),
                "MCTS answer": tree["answer"] if tree is not None else None,
                "tokens": tree["generated_tokens"] if tree is not None else None,
                "seconds": tree["seconds"] if tree is not None else None,
                "greedy result": _result(greedy),
                "greedy answer": greedy["answer"] if greedy is not None else None,
                "held-out MCTS accuracy": _accuracy_text(step, MCTS),
                "held-out greedy accuracy": _accuracy_text(step, GREEDY),
            }
        )
    st.dataframe(
        pd.DataFrame(rows),
        hide_index=True,
        column_config={"seconds": st.column_config.NumberColumn(format="%.1f")},
    )


def _accuracy_text(step: Round, key: str) -> str:
    """The round's accuracy as "67% (2/3)", marked "so far" while it evaluates, "–" before."""
    run_id = step.mcts_run if key == MCTS else step.greedy_run
    share, correct, graded = accuracy(trees, run_id)
    if share is None:
        return "–"
    return f"{share:.0%} ({correct}/{graded})" + ("" if step.finished(key) else " so far")


def _result(tree: pd.Series | None) -> str:
    return "no tree" if tree is None else VERDICTS[verdict(tree)][0]


st.subheader("This problem in every round")
overview()
shown = [r for r in chain.rounds if r.number in shown_numbers]
if not shown:
    st.info("Pick at least one round to show above.")
else:
    st.caption(
        f"Nodes are coloured by {COLOR_BY[color_by][1]} (dark purple 0 → yellow 1) and sized by visits; "
        "the orange line is the chosen path. Click a node, a step or **Open in Trees** to inspect it on "
        "the Trees page. Changes are from the column to the left."
    )
    view = ProblemView(url, trees, problem_id, color_by)
    per_row = min(PER_ROW, len(shown))
    for start in range(0, len(shown), per_row):
        for offset, column in enumerate(st.columns(per_row)):
            if start + offset >= len(shown):
                break
            position = start + offset
            with column, st.container(border=True):
                round_column(view, shown[position], shown[position - 1] if position else None)
links.publish("rounds", LINK)
if (target := st.session_state.pop(OPEN, None)) is not None:
    open_in_trees(*target)
