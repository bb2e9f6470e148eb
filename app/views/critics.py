"""Critics: where the value function, PRM, ORM and tool disagree (with a keyboard
queue to label those nodes), and how well each one's scores match verified
outcomes or people's labels."""

import html

import plotly.graph_objects as go
import streamlit as st

from app import data, links
from app.components import CRITIC_HELP, open_in_trees, path_to, require_store, untrusted
from app.critic_stats import classification, disagreements, reliability
from app.labels import label_panel
from app.layout import WEBGL_ABOVE, custom_values

OUTCOMES = {
    1.0: ("led to the gold answer", "#2e7d4f"),
    0.0: ("led to a wrong answer", "#d1495b"),
    None: ("no verified outcome", "#9e9e9e"),
}
RECENT_RUNS = 20
TRUTHS = {"outcome": "verified outcomes", "human": "people's labels"}
"""What the calibration tab measures the critics against: the ``nodes`` column and its name."""
TRUTH_NODES = {"outcome": "a verified outcome", "human": "a human verdict"}
HUMAN = {1.0: "correct", 0.0: "incorrect"}

url = data.db_url()
st.title("Critics")
st.caption(
    "The search scores every new step with several critics. Where they disagree, at least one of them is "
    "wrong — these are the nodes worth reading, and the examples worth training the critics on."
)
with st.expander("What are the critics?"):
    st.markdown(CRITIC_HELP)
require_store(url)
runs = data.runs(url)
if runs.empty:
    st.info("No runs yet — start a search on the **Search** page or click **Run a demo search** on **Home**.")
    st.stop()

LINK = [  # /critics?run=4,5&x=prm&y=orm&threshold=0.6
    links.list_param("run", "critics.runs", int),
    links.key_param("x", "critics.x"),
    links.key_param("y", "critics.y"),
    links.key_param("threshold", "critics.threshold", lambda text: min(1.0, max(0.0, float(text)))),
    links.key_param("truth", "critics.truth", lambda text: text if text in TRUTHS else "outcome"),
    links.key_param("at", "critics.queue", lambda text: max(0, int(text))),
]
links.restore("critics", LINK)
known = set(runs["id"].tolist())
if "critics.runs" in st.session_state:  # from a link: only runs that exist
    st.session_state["critics.runs"] = [i for i in st.session_state["critics.runs"] if i in known]
run_ids = st.multiselect(
    "Runs to include",
    runs["id"].tolist(),
    # The first draw picks the newest runs; later draws keep the user's pick (passing both warns).
    **({} if "critics.runs" in st.session_state else {"default": runs["id"].tolist()[:RECENT_RUNS]}),
    format_func=lambda i: data.run_label(runs[runs["id"] == i].iloc[0]),
    key="critics.runs",
    help=f"The {RECENT_RUNS} newest runs are included at first.",
)
nodes = data.critic_nodes(url, tuple(sorted(run_ids))) if run_ids else None
if nodes is None or nodes.empty:
    st.info("No scored nodes in these runs yet — pick other runs, or run a search first.")
    st.stop()

nodes = nodes.merge(
    data.human_verdicts(url, tuple(sorted(run_ids)), data.labels_stamp(url)),
    on=["tree_id", "index"],
    how="left",
)
available = [name for name, column in data.SCORE_COLUMNS.items() if nodes[column].notna().any()]
st.caption(
    f"{len(nodes)} nodes from {nodes['tree_id'].nunique()} trees. Critics with scores: "
    + ", ".join(data.CRITIC_NAMES[name] for name in available)
)


def open_from(key: str, table) -> None:  # noqa: ANN001 (a DataFrame or the chart's points)
    state = st.session_state[key]
    if key.endswith("table") and state.selection.rows:
        row = table.iloc[state.selection.rows[0]]
        st.session_state["critics.open"] = (int(row["tree_id"]), int(row["index"]))
    elif key.endswith("scatter"):
        points = state.get("selection", {}).get("points", [])
        values = custom_values(points[0].get("customdata")) if points else []
        if len(values) >= 2:
            st.session_state["critics.open"] = (int(values[0]), int(values[1]))


def _first(key: str, options: list[str]) -> dict:
    """Start a selectbox on its first option unless the session (a link, an
    earlier pick) already holds one of ``options`` (passing both warns)."""
    if st.session_state.get(key) in options:
        return {}
    st.session_state.pop(key, None)
    return {"index": 0}


def disagreement_tab() -> None:
    if len(available) < 2:
        st.info(
            "Disagreement needs two critics with scores; these runs have only " + ", ".join(available) + "."
        )
        return
    left, right, _ = st.columns([1, 1, 2])
    x = left.selectbox(
        "Critic on the x axis",
        available,
        key="critics.x",
        format_func=data.CRITIC_NAMES.get,
        **_first("critics.x", available),
    )
    rest = [name for name in available if name != x]
    y = right.selectbox(
        "Critic on the y axis",
        rest,
        key="critics.y",
        format_func=data.CRITIC_NAMES.get,
        **_first("critics.y", rest),
    )
    x_col, y_col = data.SCORE_COLUMNS[x], data.SCORE_COLUMNS[y]
    both = nodes.dropna(subset=[x_col, y_col])
    scatter = go.Scattergl if len(both) > WEBGL_ABOVE else go.Scatter
    figure = go.Figure()
    for outcome, (name, color) in OUTCOMES.items():
        part = both[both["outcome"].isna()] if outcome is None else both[both["outcome"] == outcome]
        if part.empty:
            continue
        figure.add_trace(
            scatter(
                x=part[x_col],
                y=part[y_col],
                mode="markers",
                name=name,
                marker={"color": color, "size": 8, "opacity": 0.75},
                customdata=part[["tree_id", "index"]].to_numpy(),
                hovertext=[
                    f"tree {t} · node {i}<br>{html.escape(' '.join(str(s).split())[:120])}"
                    for t, i, s in zip(part["tree_id"], part["index"], part["option_text"], strict=True)
                ],
                hoverinfo="text",
            )
        )
    figure.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "#888"},
            name="agreement",
            hoverinfo="skip",
        )
    )
    figure.update_layout(
        height=480,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": {"text": data.CRITIC_NAMES[x]}, "range": [-0.02, 1.02]},
        yaxis={"title": {"text": data.CRITIC_NAMES[y]}, "range": [-0.02, 1.02]},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    st.plotly_chart(
        figure,
        key="critics.scatter",
        on_select=lambda: open_from("critics.scatter", None),
        selection_mode="points",
    )
    st.caption(
        "Points far from the dotted diagonal are nodes the two critics disagree on. Click one to open it."
    )
    ranked = disagreements(nodes, x_col, y_col)
    st.subheader("Largest disagreements")
    st.caption("Click a row to open the node in its tree.")
    table = ranked.assign(
        outcome=ranked["outcome"].map(lambda o: OUTCOMES.get(None if o != o else o, OUTCOMES[None])[0]),
        people=ranked["human"].map(HUMAN).fillna(""),
    )[["tree_id", "index", "depth", x_col, y_col, "gap", "outcome", "people", "option_text"]]
    number = st.column_config.NumberColumn(format="%.3f", width="small")
    st.dataframe(
        table,
        key="critics.table",
        on_select=lambda: open_from("critics.table", table),
        selection_mode="single-row",
        hide_index=True,
        column_config={
            "tree_id": st.column_config.NumberColumn("tree", width="small"),
            "index": st.column_config.NumberColumn("node", width="small"),
            x_col: st.column_config.NumberColumn(data.CRITIC_NAMES[x], format="%.3f", width="small"),
            y_col: st.column_config.NumberColumn(data.CRITIC_NAMES[y], format="%.3f", width="small"),
            "gap": number,
            "people": st.column_config.TextColumn(
                "people say", help="The majority of people's labels on the step (see below)."
            ),
            "option_text": st.column_config.TextColumn("option text", width="large"),
        },
    )
    label_queue(ranked)


def _move(step: int, count: int) -> None:
    st.session_state["critics.queue"] = min(
        max(0, st.session_state.get("critics.queue", 0) + step), count - 1
    )


def label_queue(ranked) -> None:  # noqa: ANN001 (a DataFrame)
    """Walk the disagreement list one node at a time and label each step."""
    st.subheader("Label this list")
    st.caption(
        "Read each step and say whether it is right; a label moves on to the next node. "
        "Keys: **J** next, **K** previous, **1** correct, **2** incorrect, **3** unsure. "
        "The improve loop trains the PRM and the value function on these labels ahead of its own."
    )
    if ranked.empty:
        st.info("No nodes scored by both critics in these runs.")
        return
    count = len(ranked)
    position = min(int(st.session_state.get("critics.queue", 0)), count - 1)
    st.session_state["critics.queue"] = position
    row = ranked.iloc[position]
    tree_id, index = int(row["tree_id"]), int(row["index"])
    nav = st.columns([1, 1, 1, 3], vertical_alignment="center")
    nav[0].button(
        "← Previous", key="critics.queue.previous", shortcut="K", disabled=position == 0,
        on_click=_move, args=(-1, count), use_container_width=True,
    )  # fmt: skip
    nav[1].button(
        "Next →", key="critics.queue.next", shortcut="J", disabled=position >= count - 1,
        on_click=_move, args=(1, count), use_container_width=True,
    )  # fmt: skip
    if nav[2].button("Open in Trees", key="critics.queue.open", use_container_width=True):
        st.session_state["critics.open"] = (tree_id, index)
    nav[3].caption(f"Node {position + 1} of {count}: tree {tree_id}, node {index}, depth {int(row['depth'])}")
    tree_nodes = data.tree_nodes(url, tree_id, data.tree_stamp(url, tree_id))
    texts = dict(zip(tree_nodes["index"], tree_nodes["option_text"], strict=True))
    path = path_to(tree_nodes, index)
    scores = " · ".join(
        f"{data.CRITIC_NAMES[name]} {float(row[column]):.2f}"
        for name, column in data.SCORE_COLUMNS.items()
        if name in available and row[column] == row[column]
    )
    st.caption(f"Scores: {scores}. Verified outcome: {OUTCOMES.get(row['outcome'], OUTCOMES[None])[0]}.")
    st.caption("The path from the question; the last step is the one to judge")
    untrusted("\n".join(f"[{i}] {str(texts.get(i, '')).rstrip()}" for i in path[1:]))
    label_panel(url, tree_id, index, key="critics.queue.label", shortcuts=True, then=lambda: _move(1, count))


def calibration_tab() -> None:
    truth = (
        st.segmented_control(
            "Measure the critics against",
            list(TRUTHS),
            format_func=TRUTHS.get,
            key="critics.truth",
            **({} if st.session_state.get("critics.truth") in TRUTHS else {"default": "outcome"}),
        )
        or "outcome"
    )
    if truth == "outcome":
        st.caption(
            "A node's **verified outcome** is whether it led to the gold answer: a finished node's own "
            "answer, otherwise the majority answer of its rollouts. Only problems with a gold answer count. "
            "A calibrated critic's curve follows the diagonal: of the nodes it scores 0.8, about 80% turn "
            "out right."
        )
    else:
        st.caption(
            "A node's **human verdict** is the majority of the “correct” and “incorrect” labels people "
            "gave its step (label nodes on the Trees page or in the list under “Where critics disagree”; "
            "see them all on the Labels page). A step can be right on a path that still ends wrong, so "
            "this measures each critic as a judge of steps."
        )
    labelled = nodes.dropna(subset=[truth])
    if labelled.empty:
        st.info(
            "No verified outcomes yet: calibration needs trees on problems with a gold answer whose nodes "
            "reached an answer (finished steps or rollouts)."
            if truth == "outcome"
            else "No labelled steps in these runs yet: open a node on the Trees page and press 1 (correct), "
            "2 (incorrect) or 3 (unsure)."
        )
        return
    figure = go.Figure(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            line={"dash": "dot", "color": "#888"},
            name="perfectly calibrated",
            hoverinfo="skip",
        )
    )
    scored = []
    for name in available:
        column = data.SCORE_COLUMNS[name]
        bins = reliability(labelled[column], labelled[truth])
        if bins.empty:
            continue
        figure.add_trace(
            go.Scatter(
                x=bins["predicted"],
                y=bins["observed"],
                mode="lines+markers",
                name=data.CRITIC_NAMES[name],
                text=[f"{c} nodes" for c in bins["count"]],
                hovertemplate="score %{x:.2f} → %{y:.0%} right (%{text})",
            )
        )
        scored.append(name)
    figure.update_layout(
        height=440,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        xaxis={"title": {"text": "critic score (bin average)"}, "range": [0, 1]},
        yaxis={
            "title": {
                "text": "share verified correct" if truth == "outcome" else "share people call correct"
            },
            "range": [0, 1],
        },
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
    )
    st.plotly_chart(figure, key="critics.reliability")
    threshold = st.slider(
        "Count a score as “predicts correct” from",
        min_value=0.0,
        max_value=1.0,
        step=0.05,
        key="critics.threshold",
        **({} if "critics.threshold" in st.session_state else {"value": 0.5}),
    )
    st.caption(
        f"Each critic as a yes/no predictor over {len(labelled)} nodes with {TRUTH_NODES[truth]} "
        f"(score ≥ {threshold:.2f} means “predicts correct”)."
    )
    rows = [
        {
            "critic": data.CRITIC_NAMES[name],
            **classification(labelled[data.SCORE_COLUMNS[name]], labelled[truth], threshold),
        }
        for name in scored
    ]
    number = st.column_config.NumberColumn(format="%.2f")
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "precision": number,
            "recall": number,
            "accuracy": number,
            "brier": st.column_config.NumberColumn(
                "Brier", format="%.3f", help="Mean squared error; lower is better."
            ),
            "ece": st.column_config.NumberColumn(
                "ECE", format="%.3f", help="Expected calibration error; lower is better."
            ),
        },
    )


tab_disagree, tab_calibration = st.tabs(["Where critics disagree", "Calibration against outcomes or people"])
with tab_disagree:
    disagreement_tab()
with tab_calibration:
    calibration_tab()
links.publish("critics", LINK)
if (target := st.session_state.pop("critics.open", None)) is not None:
    open_in_trees(*target)
