"""Starting the app: ``canopy app [--db URL] [--port P]`` calls ``launch``."""

from __future__ import annotations

import os
import subprocess
import sys

from app.engine_info import ROOT
from store.db import DB_ENV_VAR

MAIN = ROOT / "app" / "main.py"


def app_command(*, port: int = 8501, address: str = "127.0.0.1") -> list[str]:
    return [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(MAIN),
        "--server.port",
        str(port),
        "--server.address",
        address,
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
    ]


def launch(db_url: str, *, port: int = 8501, address: str = "127.0.0.1") -> int:
    """Serve the app on ``address:port`` reading ``db_url``; returns Streamlit's exit
    code. Runs from the repository root so ``.streamlit/config.toml`` applies."""
    env = {**os.environ, DB_ENV_VAR: db_url}
    print(f"Canopy app on http://{address}:{port} (database: {db_url}); Ctrl+C stops it.", flush=True)
    try:
        return subprocess.call(app_command(port=port, address=address), cwd=ROOT, env=env)
    except KeyboardInterrupt:
        return 0
