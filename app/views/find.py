"""Find: any text in any stored option, rollout or answer, across every run."""

import re

import streamlit as st

from app import data, links
from app.components import open_in_trees, require_store
from store.text_index import MARK

LIMIT = 200  # matching nodes fetched per search (the best first)


def highlighted(snippet: str) -> str:
    """Model text as literal Markdown (every special character escaped, its lines
    joined by " · "), its matched words in bold."""
    lines = [" ".join(line.split()) for line in snippet.splitlines()]
    text = " · ".join(line for line in lines if line)
    text = re.sub(r"([\\`*_{}\[\]()#+\-.!|<>$~])", r"\\\1", text)
    return text.replace(MARK[0], "**").replace(MARK[1], "**")


url = data.db_url()
st.title("Find")
st.caption(
    "Search every step the model wrote, its rollouts and its answers, across all runs. Every word must "
    "appear (any case); end a word with `*` to match its beginnings (`multipl*`). The best matches come "
    "first, grouped by tree; **Open** shows the node on the Trees page."
)
require_store(url)
LINK = [links.key_param("q", "find.query")]  # /find?q=words
links.restore("find", LINK)
query = st.text_input("Words to find", key="find.query", placeholder="e.g. remainder  or  12 apples")
links.publish("find", LINK)
if not query.strip():
    st.stop()
hits = data.text_hits(url, query, LIMIT)
if hits.empty:
    st.info("Nothing matches all of these words. Try fewer words, or end one with `*`.")
    st.stop()
trees = data.trees(url).set_index("id")
order = hits.groupby("tree_id", sort=False)["rank"].max().sort_values(ascending=False).index
more = " (the best shown)" if len(hits) == LIMIT else ""
st.caption(f"{len(hits)} matching nodes in {len(order)} trees{more}.")
for tree_id in order:
    tree_hits = hits[hits["tree_id"] == tree_id]
    tree = trees.loc[tree_id] if tree_id in trees.index else None
    title = data.tree_label({**tree.to_dict(), "id": tree_id}) if tree is not None else f"Tree {tree_id}"
    with st.container(border=True):
        st.markdown(f"**{title}** — {len(tree_hits)} matching node{'s' * (len(tree_hits) != 1)}")
        for hit in tree_hits.itertuples():
            left, right = st.columns([8, 1])
            left.markdown(f"Node {hit.node_index}: {highlighted(hit.snippet)}")
            if right.button("Open", key=f"find.open.{tree_id}.{hit.node_index}"):
                open_in_trees(int(tree_id), int(hit.node_index))
