"""Home: what Canopy is, the stored runs at a glance, and a one-click demo search."""

import streamlit as st

from app import data
from app.components import open_in_trees
from app.engine_info import DEMO_MODEL
from app.jobs import search_arguments, start_job
from app.live import JOB_KEY

DEMO_ARGUMENTS = ["--simulations", "6", "--seed", "0", "--rollout-max-tokens", "96"]

url = data.db_url()
st.title(":material/park: Canopy", anchor=False)
st.markdown(
    "Canopy makes a language model *search* for a solution instead of writing it in one go: it grows a tree "
    "of reasoning steps with Monte Carlo Tree Search, and critics (a value function, a step checker and an "
    "outcome checker) score every step. This studio shows those trees growing live, lets you inspect every "
    "node, the near-duplicate steps that were filtered out and where the critics disagree, and drives "
    "self-improvement rounds that train the model on its own best searches."
)


def run_demo() -> None:
    arguments = search_arguments(db_url=url, model=DEMO_MODEL, task="arithmetic", index=0)
    st.session_state[JOB_KEY] = start_job("search", arguments + DEMO_ARGUMENTS, db_url=url)
    st.session_state["home.go_to_search"] = True


with st.container(border=True):
    left, right = st.columns([1, 3], vertical_alignment="center")
    left.button("Run a demo search", type="primary", icon=":material/play_arrow:", on_click=run_demo)
    right.caption(
        f"Searches arithmetic problem #0 with **{DEMO_MODEL}** (a small model installed with Canopy; no "
        "internet needed) for 6 simulations, and shows the tree growing on the Search page. "
        "Takes a few minutes on a laptop CPU; the tree appears after the first simulation."
    )
if st.session_state.pop("home.go_to_search", False):
    st.switch_page("views/search.py")

problem = data.store_problem(url)
if problem:
    st.info(f"No runs to show yet: {problem}. Click **Run a demo search** to create the database.")
    st.caption("Database URL")
    st.code(url, language=None)
    st.stop()

runs = data.runs(url)
if runs.empty:
    st.info("No runs yet — click **Run a demo search**, or start one on the **Search** page.")
    st.stop()

graded, correct = int(runs["graded"].sum()), int(runs["correct"].sum())
columns = st.columns(4)
columns[0].metric("Runs", len(runs), help="Each `canopy search` / evaluation is one run.")
columns[1].metric("Trees", int(runs["trees"].sum()), help="One tree per problem searched.")
columns[2].metric("Nodes", int(runs["nodes"].sum()), help="Reasoning steps stored across all trees.")
columns[3].metric(
    "Accuracy",
    f"{correct / graded:.0%}" if graded else "–",
    help=f"{correct} of {graded} graded trees correct.",
)

st.subheader("Stored runs")
st.caption("Newest first. Click a row to open its first tree on the Trees page.")
table = runs.assign(
    created=[c.strftime("%Y-%m-%d %H:%M") if data.present(c) else "" for c in runs["created_at"]],
    iteration=runs["iteration"].fillna(""),
    error=runs["error"].fillna(""),
)[["id", "shown_state", "model", "task", "iteration", "trees", "nodes", "accuracy", "created", "error"]]


def run_picked() -> None:
    rows = st.session_state["home.runs"].selection.rows
    if rows:
        st.session_state["home.open_run"] = int(runs.iloc[rows[0]]["id"])


st.dataframe(
    table,
    key="home.runs",
    on_select=run_picked,
    selection_mode="single-row",
    hide_index=True,
    column_config={
        "id": st.column_config.NumberColumn("run", width="small"),
        "shown_state": st.column_config.TextColumn("status"),
        "accuracy": st.column_config.ProgressColumn("accuracy", min_value=0, max_value=1, format="percent"),
        "error": st.column_config.TextColumn("error", width="large"),
    },
)
if (run_id := st.session_state.pop("home.open_run", None)) is not None:
    trees = data.trees(url)
    run_trees = trees[trees["run_id"] == run_id]
    if run_trees.empty:
        st.warning(f"Run {run_id} has no trees yet.")
    else:
        open_in_trees(int(run_trees["id"].min()))

failed = runs[runs["state"].isin(["failed", "stopped (no heartbeat)"])]
for run in failed.head(3).itertuples():
    st.warning(
        f"Run {run.id} {run.state}"
        + (
            ": see its error in the table above."
            if data.present(run.error)
            else " — its trees keep what was written before it stopped."
        )
    )

st.subheader("Where to go next")
st.page_link(
    "views/search.py", label="Search: start a search and watch the tree grow", icon=":material/play_circle:"
)
st.page_link(
    "views/trees.py",
    label="Trees: browse trees, replay growth, inspect any node",
    icon=":material/account_tree:",
)
st.page_link(
    "views/critics.py",
    label="Critics: where the critics disagree, and how well calibrated they are",
    icon=":material/balance:",
)
st.page_link(
    "views/improve.py",
    label="Improve: self-improvement iterations and their metrics",
    icon=":material/trending_up:",
)
st.page_link(
    "views/data.py", label="Data: mined training examples, export to JSONL", icon=":material/dataset:"
)
