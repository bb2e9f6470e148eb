"""UI pieces shared by the pages: the store guard, untrusted text, the tree chart
with node selection, the node table, and the node detail pane.

Model text (questions, options, rollouts, answers) is untrusted: it goes through
``st.code``/``st.text``/dataframes or escaped Plotly labels, never Markdown or HTML.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from app import data
from app.layout import COLOR_BY, TreeSnapshot, build_tree_figure, replay, selected_node
from app.token_view import token_view
from engine.answers import answers_match

SELECTED_NODES = "selected_nodes"
"""Session key: {tree id: selected node index} (not a widget key, so it survives
page switches)."""
FOCUS = "focus"
"""Session key: {"tree_id", "node"} set by a page that opens a node on the Trees page."""

CRITIC_HELP = (
    "**Critics** score a node between 0 (bad) and 1 (good). "
    "**Value function**: predicts the final reward from this partial solution. "
    "**PRM** (process reward model): probability that this step is correct. "
    "**ORM** (outcome reward model): probability that a finished solution through this node is correct, "
    "judged on fast rollouts. **Tool**: a checker, either arithmetic (recomputes the sums it finds) or "
    "program (the share of programs the policy wrote for the problem, run in a sandbox, whose result "
    "agrees with the answer reached). "
    "**Combined**: their weighted mean, the value the search backs up. "
    "**Q**: the mean backed-up value over the node's visits."
)


CRITICS = [
    ("Value", "value_score", "expected final reward"),
    ("PRM", "prm_score", "is this step correct?"),
    ("ORM", "orm_score", "is the finished answer right?"),
    ("Tool", "tool_score", "does a checker agree?"),
    ("Combined", "combined_score", "what the search backs up"),
]


def require_store(url: str) -> None:
    """Stop the page with a clear message if the store cannot be read."""
    problem = data.store_problem(url)
    if problem is None:
        return
    st.error(f"Cannot open the database: {problem}", icon=":material/database:")
    st.caption("Database URL")
    st.code(url, language=None)
    st.info("Start a search on the **Search** page or click **Run a demo search** on **Home** to create it.")
    st.stop()


def untrusted(text: Any, *, empty: str = "(empty)") -> None:
    """Model text, shown verbatim and wrapped."""
    text = str(text) if data.present(text) else ""
    st.code(text if text.strip() else empty, language=None, wrap_lines=True)


def score(value: Any) -> str:
    return f"{float(value):.3f}" if data.present(value) else "–"


def selected_index(tree_id: int) -> int:
    return int(st.session_state.setdefault(SELECTED_NODES, {}).get(tree_id, 0))


def select_node(tree_id: int, index: int) -> None:
    st.session_state.setdefault(SELECTED_NODES, {})[tree_id] = int(index)


def open_in_trees(tree_id: int, node: int = 0) -> None:
    """Jump to the Trees page showing ``node`` of ``tree_id``."""
    st.session_state[FOCUS] = {"tree_id": int(tree_id), "node": int(node)}
    select_node(tree_id, node)
    st.switch_page("views/trees.py")


def load_tree(url: str, tree_id: int) -> tuple[pd.DataFrame, pd.DataFrame, list]:
    stamp = data.tree_stamp(url, tree_id)
    return (
        data.tree_nodes(url, tree_id, stamp),
        data.tree_filtered(url, tree_id, stamp),
        data.tree_backups(url, tree_id, stamp),
    )


def _chart_selected(key: str, tree_id: int) -> None:
    index = selected_node(st.session_state.get(key))
    if index is not None:
        select_node(tree_id, index)


def tree_chart(
    snapshot: TreeSnapshot,
    *,
    tree_id: int,
    key: str,
    color_by: str,
    chosen_path: list[int],
    show_filtered: bool = True,
    height: int = 560,
    selectable: bool = True,
    marks: dict[int, str] | None = None,
) -> None:
    figure = build_tree_figure(
        snapshot,
        color_by=color_by,
        chosen_path=chosen_path,
        selected=selected_index(tree_id) if selectable else None,
        show_filtered=show_filtered,
        height=height,
        marks=marks,
    )
    config = {
        "scrollZoom": True,
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": f"tree-{tree_id}-{color_by}", "scale": 2},
    }
    if selectable:
        st.plotly_chart(
            figure,
            key=key,
            on_select=lambda: _chart_selected(key, tree_id),
            selection_mode="points",
            config=config,
        )
    else:
        st.plotly_chart(figure, key=key, config=config)


def color_picker(key: str) -> str:
    labels = {name: title for name, (_, title) in COLOR_BY.items()}
    choice = st.segmented_control(
        "Colour nodes by",
        list(COLOR_BY),
        default="combined",
        format_func=lambda name: {"q": "Q", "prm": "PRM", "orm": "ORM"}.get(name, name.capitalize()),
        key=key,
        help="Which critic's score colours the nodes (0 = dark purple, 1 = yellow). "
        + "; ".join(labels.values()),
    )
    return choice or "combined"


def node_table(nodes: pd.DataFrame, *, tree_id: int, key: str, chosen_path: list[int]) -> None:
    """Every node as a row; picking a row selects the node."""
    table = pd.DataFrame(
        {
            "node": nodes["index"],
            "parent": nodes["parent_index"],
            "depth": nodes["depth"],
            "on chosen path": nodes["index"].isin(chosen_path),
            "option text": nodes["option_text"],
            "visits": nodes["visits"],
            "Q": nodes["q"],
            "prior": nodes["prior"],
            "value": nodes["value_score"],
            "PRM": nodes["prm_score"],
            "ORM": nodes["orm_score"],
            "tool": nodes["tool_score"],
            "combined": nodes["combined_score"],
            "terminal": nodes["terminal"],
            "answer": nodes["answer"],
        }
    )
    indices = [int(i) for i in nodes["index"]]

    def picked() -> None:
        rows = st.session_state[key].selection.rows
        if rows:
            select_node(tree_id, indices[rows[0]])

    number = st.column_config.NumberColumn(format="%.3f", width="small")
    st.dataframe(
        table,
        key=key,
        on_select=picked,
        selection_mode="single-row",
        hide_index=True,
        height=320,
        column_config={
            "option text": st.column_config.TextColumn(width="large"),
            **{name: number for name in ("Q", "prior", "value", "PRM", "ORM", "tool", "combined")},
        },
    )


def path_to(nodes: pd.DataFrame, index: int) -> list[int]:
    parent_of = dict(zip(nodes["index"], nodes["parent_index"], strict=True))
    path, seen = [index], {index}
    while parent_of.get(path[-1], -1) >= 0 and parent_of[path[-1]] not in seen:
        path.append(int(parent_of[path[-1]]))
        seen.add(path[-1])
    return path[::-1]


def node_detail(
    tree: pd.Series,
    nodes: pd.DataFrame,
    filtered: pd.DataFrame,
    index: int,
    programs: pd.DataFrame | None = None,
) -> None:
    """Everything stored about one node (and the program checker's programs)."""
    rows = nodes[nodes["index"] == index]
    if rows.empty:
        st.info(f"Node {index} does not exist at this point of the replay; pick another node.")
        return
    node = rows.iloc[0]
    is_root = node["parent_index"] < 0
    where = "the root (the question itself)" if is_root else f"depth {node['depth']}"
    created = (
        "before the first simulation"
        if node["created_simulation"] < 0
        else (f"in simulation {node['created_simulation']}")
    )
    st.markdown(f"#### Node {index}")
    st.caption(f"{where}; created {created}. Stop reason: {node['stop_reason'] or '–'}.")
    if not is_root:
        st.caption("Option text (one reasoning step written by the policy)")
        untrusted(node["option_text"])
        token_view(tree, node)
    # Two rows of two: the detail pane is narrow and four metrics in a row truncate to "0.…".
    columns = [*st.columns(2), *st.columns(2)]
    columns[0].metric("Visits", int(node["visits"]), help="How many simulations passed through this node.")
    columns[1].metric(
        "Q", score(node["q"]), help="Mean of the values backed up through this node, in [0, 1]."
    )
    columns[2].metric(
        "Prior", score(node["prior"]), help="The policy's probability of this option among its siblings."
    )
    columns[3].metric("Children", int((nodes["parent_index"] == index).sum()))
    st.dataframe(
        pd.DataFrame(
            {
                "critic": [f"{name}: {judges}" for name, _, judges in CRITICS],
                "score": [node[column] if data.present(node[column]) else None for _, column, _ in CRITICS],
            }
        ),
        hide_index=True,
        column_config={
            "score": st.column_config.ProgressColumn(
                "score (0 bad – 1 good)", min_value=0.0, max_value=1.0, format="%.3f", width="small"
            ),
        },
    )
    with st.expander("What do these scores mean?"):
        st.markdown(CRITIC_HELP)
    if bool(node["terminal"]):
        st.caption("Final answer of this finished solution")
        untrusted(node["answer"], empty="(no answer found)")
    path = path_to(nodes, index)
    texts = dict(zip(nodes["index"], nodes["option_text"], strict=True))
    st.caption(f"The whole path, root → node {index} (question first)")
    steps = [f"Q: {tree['question']}"] + [f"[{i}] {str(texts.get(i, '')).rstrip()}" for i in path[1:]]
    untrusted("\n".join(steps))
    rollouts = node["rollouts"] if isinstance(node["rollouts"], list) else []
    st.caption(
        f"Rollouts from this node ({len(rollouts)}): fast completions to the end, scored by the ORM and tool"
    )
    if rollouts:
        gold = tree.get("gold")
        st.dataframe(
            pd.DataFrame(
                {
                    "completion": [str(r.get("text", "")) for r in rollouts],
                    "tokens": [r.get("tokens") for r in rollouts],
                    "answer": [r.get("answer") for r in rollouts],
                    "correct": [
                        None
                        if not data.present(gold) or r.get("answer") is None
                        else answers_match(str(r.get("answer")), str(gold))
                        for r in rollouts
                    ],
                    "ORM": [r.get("orm") for r in rollouts],
                    "tool": [r.get("tool") for r in rollouts],
                }
            ),
            hide_index=True,
            column_config={"completion": st.column_config.TextColumn(width="large")},
        )
    siblings = filtered[filtered["parent_index"] == index] if len(filtered) else filtered
    st.caption(
        f"Filtered options under this node ({len(siblings)}): sampled children dropped as near-duplicates "
        "of an existing child"
    )
    if len(siblings):
        st.dataframe(
            pd.DataFrame(
                {
                    "filtered text": siblings["text"],
                    "similarity": siblings["similarity"],
                    "measure": siblings["measure"],
                    "collided with node": siblings["collided_with_index"],
                    "that node's text": [texts.get(int(i), "") for i in siblings["collided_with_index"]],
                    "simulation": siblings["simulation"],
                }
            ),
            hide_index=True,
            column_config={"similarity": st.column_config.NumberColumn(format="%.3f")},
        )
    own = (
        filtered[filtered["collided_with_index"] == index]
        if len(filtered) and not is_root
        else filtered.iloc[0:0]
    )
    if len(own):
        st.caption(f"{len(own)} sampled option(s) were dropped as near-duplicates of this node.")
    if programs is not None and len(programs):
        reached = [node["answer"]] if bool(node["terminal"]) else [r.get("answer") for r in rollouts]
        program_checks(programs, [str(answer) for answer in reached if data.present(answer)])


def program_checks(programs: pd.DataFrame, answers: list[str]) -> None:
    """The program checker's evidence: each program's result, whether it agrees
    with the answers this node reached, and (expanded) its code and output."""
    verdicts = [v for v in programs["verdict"] if data.present(v)]
    st.caption(
        f"Program checker: {len(programs)} programs written for this problem, {len(verdicts)} gave a "
        "result. A trajectory's tool score is the share of those results equal to its answer."
    )
    st.dataframe(
        pd.DataFrame(
            {
                "program": [f"#{int(i) + 1}" for i in programs["index"]],
                "result": programs["verdict"],
                "agrees with this node's answers": [
                    None
                    if not data.present(verdict) or not answers
                    else ", ".join(a for a in answers if answers_match(a, str(verdict))) or "no"
                    for verdict in programs["verdict"]
                ],
                "status": programs["status"],
                "error": programs["error"],
            }
        ),
        hide_index=True,
    )
    with st.expander("The programs, as written and what they printed"):
        for row in programs.itertuples(index=False):
            st.caption(f"Program #{int(row.index) + 1}: {row.status}, result {row.verdict or 'none'}")
            untrusted(row.text)
            if str(row.output).strip():
                st.caption("Printed")
                untrusted(row.output)
            if str(row.error).strip():
                st.caption("Error (the program gave no verdict)")
                untrusted(row.error)


def run_message(state: str, error: Any) -> None:
    """A failed, stopped or interrupted run's message, worded by what happened."""
    if not data.present(error) and state != "stopped (no heartbeat)":
        return
    if state == "failed":
        st.error("This run failed; its trees keep what was written before the failure.")
    elif state == "interrupted":
        st.warning("This run was stopped before it finished; its trees keep what was written until then.")
    elif state == "stopped (no heartbeat)":
        st.warning(
            "This run stopped writing more than a minute ago without finishing (the process was probably "
            "killed); its trees keep what was written until then."
        )
    else:
        st.info("Message from the run:")
    if data.present(error):
        untrusted(error)


def tree_summary(tree: pd.Series, state: str | None = None, *, compact: bool = False) -> None:
    """Answer, verdict and sizes of a tree."""
    gold = str(tree["gold"]) if data.present(tree["gold"]) else "–"
    verdict = (
        {True: "✓ correct", False: "✗ wrong"}[bool(tree["correct"])]
        if data.present(tree["correct"])
        else "not graded"
    )
    simulations = f"{tree['simulations_done']}/{tree['simulations_target']}"
    nodes = f"{tree['node_count']} (+{tree['filtered_count']})"
    if compact:
        st.caption("Answer chosen by the search")
        untrusted(tree["answer"], empty="(no answer yet)")
        st.text(f"{verdict} · gold {gold} · {simulations} simulations · {nodes} nodes (+filtered)")
        return
    columns = st.columns([2, 1, 1, 1, 1])
    with columns[0]:
        st.caption("Answer chosen by the search")
        untrusted(tree["answer"], empty="(no answer yet)")
    columns[1].metric("Gold answer", gold[:20])
    columns[2].metric("Result", verdict)
    columns[3].metric("Simulations", simulations)
    columns[4].metric("Nodes (+ filtered)", nodes)
    if state:
        st.caption(f"Tree status: {state}")


def snapshot_at(url: str, tree_id: int, upto: int | None) -> tuple[TreeSnapshot, pd.DataFrame, pd.DataFrame]:
    nodes, filtered, backups = load_tree(url, tree_id)
    return replay(nodes, filtered, backups, upto), nodes, filtered
