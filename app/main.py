"""Canopy's Streamlit app: ``streamlit run app/main.py`` (or ``canopy app``).

The entry point only builds the navigation and runs the chosen page; a page that
fails shows a one-line message instead of a traceback.
"""

import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `streamlit run` puts app/ on the path, not the repository root
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

st.set_page_config(page_title="Canopy", page_icon="🌳", layout="wide")

PAGES = [
    st.Page("views/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("views/search.py", title="Search", icon=":material/play_circle:"),
    st.Page("views/trees.py", title="Trees", icon=":material/account_tree:"),
    st.Page("views/find.py", title="Find", icon=":material/search:"),
    st.Page("views/critics.py", title="Critics", icon=":material/balance:"),
    st.Page("views/labels.py", title="Labels", icon=":material/label:"),
    st.Page("views/improve.py", title="Improve", icon=":material/trending_up:"),
    st.Page("views/rounds.py", title="Rounds", icon=":material/view_week:"),
    st.Page("views/data.py", title="Data", icon=":material/dataset:"),
]

# The pages live in views/, not pages/: a pages/ folder next to the entry point
# switches Streamlit into its older multipage mode for a session's first run
# (and in AppTest), which would run a page without this file around it.
page = st.navigation(PAGES)
try:
    page.run()
except Exception as exc:  # the last line of defence: a message, never a traceback on screen
    traceback.print_exc()
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    st.error("This page hit a problem it could not handle. Reloading the page usually helps.")
    st.code(f"{type(exc).__name__}: {message[:300]}", language=None, wrap_lines=True)
    st.caption("The full report is in the terminal that runs `canopy app`.")
