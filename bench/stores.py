"""What the store benchmarks share: throw-away stores of each kind, the
machine's load to read their timings against, and how they report."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, to read the timings against."""
    return [round(load, 2) for load in os.getloadavg()]


@contextmanager
def databases(postgres: str | None) -> Iterator[Callable[[str], str]]:
    """A function giving a store URL of a kind ("sqlite", "postgresql"): a fresh
    SQLite file, or a fresh PostgreSQL database on a throw-away server (started
    only when needed, stopped at the end), or always ``postgres`` when given."""
    folder = Path(tempfile.mkdtemp(prefix="canopy-bench-"))
    cluster = None
    made = 0

    def new(kind: str) -> str:
        nonlocal cluster, made
        made += 1
        if kind == "sqlite":
            return f"sqlite:///{folder / f'store-{made}.db'}"
        if postgres:
            return postgres
        if cluster is None:
            from tests.postgres import Cluster

            # Its own folder: as root the server runs as "postgres", which must own it.
            cluster = Cluster(Path(tempfile.mkdtemp(prefix="canopy-bench-pg-")))
        return cluster.database()

    try:
        yield new
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.folder, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def emit(report: dict[str, Any], out: str | None) -> dict[str, Any]:
    """Print ``report`` as JSON, also write it to ``out`` when given; return it."""
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")
    return report
