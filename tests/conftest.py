"""Session-wide fixtures: the store's URL on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.postgres import SKIP_ENV, Cluster


@pytest.fixture(scope="session")
def postgres():
    """A throw-away PostgreSQL server for the whole session (``tests/postgres.py``)."""
    if os.environ.get(SKIP_ENV) == "0":
        pytest.skip(f"{SKIP_ENV}=0: PostgreSQL tests are off")
    folder = Path(tempfile.mkdtemp(prefix="canopy-pg-"))
    cluster = Cluster(folder)
    yield cluster
    cluster.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """An empty store's URL, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'canopy.db'}"
    return request.getfixturevalue("postgres").database()
