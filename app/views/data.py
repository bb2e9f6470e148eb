"""Data: the training examples mined from trees, by kind, exported as JSONL."""

import streamlit as st

from app import data, links
from app.components import require_store
from store.example_kinds import EXAMPLE_KINDS
from store.examples import PROVENANCE_KEYS

url = data.db_url()
st.title("Data")
st.caption("Training examples mined from the stored trees by the improve loop, ready to export.")
require_store(url)
counts = data.example_counts(url)
if counts.empty:
    st.info(
        "No training examples yet. They are mined from search trees by `canopy improve` "
        "(see the Improve page)."
    )
    st.stop()

by_kind = counts.groupby("kind")["examples"].sum()
columns = st.columns(len(by_kind))
for column, (kind, total) in zip(columns, by_kind.items(), strict=True):
    column.metric(kind.upper(), int(total), help=EXAMPLE_KINDS.get(kind, ""))
with st.expander("What each kind is"):
    for kind, meaning in EXAMPLE_KINDS.items():
        st.markdown(f"- **{kind}**: {meaning}")
iterations = data.iterations(url)
names = dict(zip(iterations["id"], iterations["name"], strict=True))
pivot = counts.assign(
    iteration=[
        f"{int(i)}: {names.get(int(i), '')}" if data.present(i) else "none" for i in counts["iteration_id"]
    ]
).pivot_table(index="iteration", columns="kind", values="examples", aggfunc="sum", fill_value=0)
st.bar_chart(pivot, height=260, x_label="self-improvement iteration", y_label="examples")


def _iteration(text: str) -> int | None:
    return None if text == "none" else int(text)


LINK = [  # /data?kind=sft,dpo&iteration=3,none
    links.list_param("kind", "data.kinds"),
    links.Param(
        "iteration",
        lambda: (
            ",".join("none" if i is None else str(i) for i in st.session_state.get("data.iterations") or [])
            or None
        ),
        lambda text: st.session_state.__setitem__(
            "data.iterations", [_iteration(t) for t in text.split(",") if t]
        ),
    ),
]
links.restore("data", LINK)
st.subheader("Export")
left, right = st.columns(2)
kinds = left.multiselect("Kinds", sorted(by_kind.index), key="data.kinds", help="Leave empty for all kinds.")
iteration_ids = sorted(
    {int(i) if data.present(i) else None for i in counts["iteration_id"]},
    key=lambda i: (i is None, i or 0),
)
chosen = right.multiselect(
    "Iterations",
    iteration_ids,
    key="data.iterations",
    help="Leave empty for all.",
    format_func=lambda i: "no iteration" if i is None else f"{i}: {names.get(i, '')}",
)
links.publish("data", LINK)
jsonl = data.examples_jsonl(url, tuple(kinds), tuple(chosen))
lines = jsonl.count("\n")
st.download_button(
    f"Download {lines} examples as JSONL",
    jsonl,
    file_name="canopy-examples.jsonl",
    mime="application/jsonl",
    icon=":material/download:",
    disabled=lines == 0,
)
st.caption(
    "One JSON object a line: the example's fields (they depend on its kind), then "
    + ", ".join(f"`{key}`" for key in PROVENANCE_KEYS)
    + ". `canopy export --kind KIND` writes the same lines for one kind."
)
with st.expander("Preview the first examples"):
    for line in jsonl.splitlines()[:5]:
        st.json(line, expanded=False)
