"""Labels: every step people have judged, filtered by run, verdict and person,
next to what the critics said about the same step; a row opens the node."""

import pandas as pd
import streamlit as st

from app import data, links
from app.components import open_in_trees, require_store
from store.schema import LABEL_VERDICTS

url = data.db_url()
st.title("Labels")
st.caption(
    "Steps people marked correct, incorrect or unsure — on the Trees page (open a node, press 1, 2 or 3) or "
    "in the keyboard list on the Critics page. `canopy improve` trains the PRM and the value function on "
    "them ahead of its own mined labels; `canopy export --kind labels` writes them out."
)
require_store(url)
stamp = data.labels_stamp(url)
authors = data.label_authors(url, stamp)
if not authors:
    st.info(
        "No labels yet. Open a tree on the **Trees** page, click a node and press **1** (correct), "
        "**2** (incorrect) or **3** (unsure) — or label the critics' largest disagreements on **Critics**."
    )
    st.stop()

runs = data.runs(url)
LINK = [  # /labels?run=3&verdict=incorrect&author=ada
    links.list_param("run", "labels.runs", int),
    links.list_param("verdict", "labels.verdicts"),
    links.list_param("author", "labels.authors"),
]
links.restore("labels", LINK)
for key, known in (("labels.runs", set(runs["id"])), ("labels.verdicts", set(LABEL_VERDICTS))):
    if key in st.session_state:  # from a link: only values that exist
        st.session_state[key] = [value for value in st.session_state[key] if value in known]
if "labels.authors" in st.session_state:
    st.session_state["labels.authors"] = [a for a in st.session_state["labels.authors"] if a in authors]
filters = st.columns([2, 1, 1])
run_ids = filters[0].multiselect(
    "Runs",
    runs["id"].tolist(),
    key="labels.runs",
    format_func=lambda i: data.run_label(runs[runs["id"] == i].iloc[0]),
    placeholder="All runs",
)
verdicts = filters[1].multiselect("Verdicts", list(LABEL_VERDICTS), key="labels.verdicts", placeholder="All")
chosen_authors = filters[2].multiselect("People", authors, key="labels.authors", placeholder="Everyone")
links.publish("labels", LINK)
table = data.label_table(
    url, stamp, tuple(run_ids) or None, tuple(verdicts) or None, tuple(chosen_authors) or None
)
if table.empty:
    st.info("No labels match these filters.")
    st.stop()


def counted(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


counts = table["verdict"].value_counts()
steps = table[["tree_id", "node_index"]].drop_duplicates().shape[0]
st.caption(
    f"{counted(len(table), 'label', 'labels')} on {counted(steps, 'step', 'steps')} by "
    f"{counted(table['author'].nunique(), 'person', 'people')}: "
    + ", ".join(f"{counts.get(v, 0)} {v}" for v in LABEL_VERDICTS)
    + ". Click a row to open the step in its tree."
)
shown = table.assign(
    step=[steps[-1] if len(steps) else "" for steps in table["steps"]],
    when=pd.to_datetime(table["updated_at"], utc=True),
)[
    [
        "when",
        "author",
        "verdict",
        "note",
        "tree_id",
        "node_index",
        "prm_score",
        "value_score",
        "orm_score",
        "combined_score",
        "question",
        "step",
    ]
]
score = {"format": "%.2f", "width": "small"}
st.dataframe(
    shown,
    key="labels.table",
    on_select="rerun",
    selection_mode="single-row",
    hide_index=True,
    column_config={
        "when": st.column_config.DatetimeColumn("when (UTC)", format="YYYY-MM-DD HH:mm"),
        "tree_id": st.column_config.NumberColumn("tree", width="small"),
        "node_index": st.column_config.NumberColumn("node", width="small"),
        "prm_score": st.column_config.NumberColumn("PRM", **score),
        "value_score": st.column_config.NumberColumn("Value", **score),
        "orm_score": st.column_config.NumberColumn("ORM", **score),
        "combined_score": st.column_config.NumberColumn("Combined", **score),
        "question": st.column_config.TextColumn(width="medium"),
        "step": st.column_config.TextColumn("the labelled step", width="large"),
        "note": st.column_config.TextColumn(width="medium"),
    },
)
st.download_button(
    "Download these labels (JSONL)",
    data.labels_jsonl(table),
    file_name="canopy-labels.jsonl",
    mime="application/jsonl",
    help="The same lines as `canopy export --kind labels`, for the labels shown.",
)
selection = st.session_state["labels.table"].selection.rows
if selection:
    row = shown.iloc[selection[0]]
    open_in_trees(int(row["tree_id"]), int(row["node_index"]))
