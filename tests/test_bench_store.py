"""bench/store_writers.py and bench/studio_render.py at a tiny size, on SQLite
and PostgreSQL: what they report is read back from the stores (no timing is
held to a threshold here)."""

from __future__ import annotations

import importlib
import json

import pytest

# Imported by module name, not from the file: the writers are spawned
# processes that must import the bench's worker function themselves.
store_writers = importlib.import_module("bench.store_writers")
studio_render = importlib.import_module("bench.studio_render")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_concurrent_writers_lose_no_simulation(kind, request, tmp_path) -> None:
    postgres = ["--postgres", request.getfixturevalue("postgres").database()] if kind == "postgresql" else []
    out = tmp_path / "writers.json"
    argv = ["--writers", "2", "--problems", "1", "--simulations", "2", "--stores", kind, "--out", str(out)]
    report = store_writers.main([*argv, *postgres])
    assert json.loads(out.read_text()) == report
    assert report["cpus"] >= 1 and len(report["load_average"]["start"]) == 3
    store = report["stores"][kind]
    assert set(store["runs"]) == {"1", "2"}
    for writers, run in store["runs"].items():
        assert run["writers"] == int(writers) and run["problems"] == 2
        assert (run["errors"], run["lock_errors"], run["error_texts"]) == (0, 0, [])
        assert run["simulations_expected"] == run["simulations_found"] == run["simulations_with_events"] == 4
        assert run["simulations_lost"] == 0
        assert run["trees"] == run["trees_completed"] == 2
        assert run["node_rows"] == run["node_count_sum"] > 2
        assert (
            run["rows"] == run["node_rows"] + run["event_rows"] + run["filtered_rows"] + run["program_rows"]
        )
        assert run["wall_seconds"] > 0 and run["simulations_per_second"] > 0 and run["rows_per_second"] > 0
    assert store["speedup"] > 0


def test_a_writer_that_cannot_start_reports_its_error(tmp_path) -> None:
    """A store the writers cannot open: each says why, and none waits for the rest forever."""
    url = f"sqlite:///{tmp_path / 'missing' / 'store.db'}"
    (tmp_path / "missing").write_text("a file where the folder should be")
    reports = store_writers.run_writers(url, [[], []], simulations=2, seed=0)
    assert [report["writer"] for report in reports] == [0, 1]
    for report in reports:
        assert report["run_id"] is None and report["started"] is None
        assert len(report["errors"]) == 1 and "StoreError" in report["errors"][0]["text"]
        assert report["errors"][0]["lock"] is False


def test_studio_render_reads_the_same_tree_from_both_stores(postgres, tmp_path) -> None:
    out = tmp_path / "studio.json"
    argv = ["--nodes", "200", "--repeats", "1", "--page-repeats", "1", "--out", str(out)]
    report = studio_render.main([*argv, "--postgres", postgres.database()])
    assert json.loads(out.read_text()) == report
    assert report["nodes"] == 200 and report["filtered"] > 0 and report["events"] > report["simulations"] > 0
    assert set(report["stores"]) == {"sqlite", "postgresql"}
    for store in report["stores"].values():
        assert store["nodes_read"] == 200
        assert store["page_shows_tree"] is True and store["page_exceptions"] == []
        for timing in ("loaders_s", "figure_s", "total_s", "page_s"):
            assert 0 < store[timing]["best"] <= store[timing]["median"]
    ratios = report["postgres_over_sqlite"]
    assert set(ratios) == {"loaders_s", "figure_s", "total_s", "page_s"} and min(ratios.values()) > 0
    assert report["goal_ratio"] == 1.2 and isinstance(report["meets_goal"], bool)
    assert report["cpus"] >= 1 and len(report["load_average"]["end"]) == 3
