"""The app's pages, run by ``st.navigation`` in ``app/main.py`` (not imported)."""
