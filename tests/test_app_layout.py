"""The app's pure parts: tree layout, replay, the figure, critic statistics, metric
grouping, CLI arguments and run liveness."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app.critic_stats import classification, disagreements, reliability
from app.data import run_state, verified_outcome
from app.improve_metrics import flatten, grouped, metric_table
from app.jobs import config_arguments, search_arguments
from app.launch import app_command
from app.layout import WEBGL_ABOVE, TreeSnapshot, build_tree_figure, replay, selected_node, tidy_layout


def make_nodes(parents: list[int], texts: list[str] | None = None) -> pd.DataFrame:
    size = len(parents)
    depth = [0] * size
    for i in range(1, size):
        depth[i] = depth[parents[i]] + 1
    return pd.DataFrame(
        {
            "index": range(size),
            "parent_index": parents,
            "depth": depth,
            "option_text": texts or [f"step {i}" for i in range(size)],
            "visits": [size - i for i in range(size)],
            "q": np.linspace(0, 1, size),
            "prior": [0.5] * size,
            "value_score": [np.nan] + [0.3] * (size - 1),
            "prm_score": [np.nan] + [0.6] * (size - 1),
            "orm_score": [np.nan] * size,
            "tool_score": [np.nan] * size,
            "combined_score": [np.nan] + [0.45] * (size - 1),
            "terminal": [False] * size,
            "answer": [None] * size,
            "created_simulation": [-1] + list(range(size - 1)),
        }
    )


NO_FILTERED = pd.DataFrame(
    columns=["id", "parent_index", "text", "similarity", "measure", "collided_with_index", "simulation"]
)


def test_parents_are_centred_over_children_and_leaves_evenly_spaced() -> None:
    parents = [-1, 0, 0, 0, 1, 1, 3]
    x, depth = tidy_layout(parents)
    assert list(depth) == [0, 1, 1, 1, 2, 2, 2]
    leaves = [i for i in range(len(parents)) if i not in parents]
    assert sorted(x[leaves]) == [0, 1, 2, 3]
    for node in range(len(parents)):
        kids = [i for i, p in enumerate(parents) if p == node]
        if kids:
            assert x[node] == pytest.approx((x[kids[0]] + x[kids[-1]]) / 2)


def test_layout_of_a_deep_chain_does_not_recurse() -> None:
    parents = [-1] + list(range(9999))
    x, depth = tidy_layout(parents)
    assert depth[-1] == 9999 and np.all(x == 0)


def test_layout_survives_orphans_and_cycles() -> None:
    x, depth = tidy_layout([-1, 0, 7, 4, 3])  # 2 has a missing parent, 3 <-> 4 is a cycle
    assert len(x) == 5 and depth[2] == 0


def test_replay_recounts_visits_and_drops_later_nodes() -> None:
    nodes = make_nodes([-1, 0, 0, 1])
    backups = [(0, [0, 1], 1.0), (1, [0, 2], 0.0), (2, [0, 1, 3], 0.5)]
    early = replay(nodes, NO_FILTERED, backups, 1)
    assert list(early.nodes["index"]) == [0, 1, 2]
    assert list(early.nodes["visits"]) == [2, 1, 1]
    assert list(early.nodes["q"]) == pytest.approx([0.5, 1.0, 0.0])
    assert replay(nodes, NO_FILTERED, backups, None).nodes is nodes


def test_figure_carries_node_ids_and_escapes_model_text() -> None:
    nodes = make_nodes([-1, 0, 0, 1], ["", "<script>alert(1)</script>", "**bold**", "x" * 400])
    filtered = pd.DataFrame(
        {
            "id": [9],
            "parent_index": [1],
            "text": ["<b>dup</b>"],
            "similarity": [0.97],
            "measure": ["cosine"],
            "collided_with_index": [3],
            "simulation": [1],
        }
    )
    figure = build_tree_figure(TreeSnapshot(nodes, filtered, None), chosen_path=[0, 1, 3], selected=3)
    assert all(isinstance(trace, go.Scatter) for trace in figure.data)
    names = [trace.name for trace in figure.data]
    assert "chosen path" in names and "filtered sibling (near-duplicate)" in names and "selected" in names
    labels = " ".join(
        text for trace in figure.data if trace.hovertext is not None for text in trace.hovertext
    )
    assert "<script>" not in labels and "&lt;script&gt;" in labels and "&lt;b&gt;dup" in labels
    ids = sorted(
        int(c[0])
        for trace in figure.data
        if trace.mode == "markers"
        and trace.name != "selected"
        and trace.customdata is not None
        and trace.name != "filtered sibling (near-duplicate)"
        for c in trace.customdata
    )
    assert ids == [0, 1, 2, 3]
    dashed = [trace for trace in figure.data if trace.line and trace.line.dash == "dash"]
    assert dashed, "filtered siblings hang on dashed edges"


def test_big_trees_use_webgl() -> None:
    parents = [-1] + [i // 3 for i in range(WEBGL_ABOVE + 10)]
    figure = build_tree_figure(TreeSnapshot(make_nodes(parents), NO_FILTERED, None), color_by="q")
    assert all(isinstance(trace, go.Scattergl) for trace in figure.data)


def test_selected_node_from_chart_events() -> None:
    assert selected_node({"selection": {"points": [{"customdata": [4, -1]}]}}) == 4
    assert selected_node({"selection": {"points": [{"x": 1}]}}) is None
    assert selected_node(None) is None


def test_disagreements_are_ranked() -> None:
    frame = pd.DataFrame({"a": [0.1, 0.9, None, 0.5], "b": [0.2, 0.1, 0.3, 0.5]})
    ranked = disagreements(frame, "a", "b")
    assert list(ranked["gap"]) == pytest.approx([0.8, 0.1, 0.0])


def test_calibration_numbers() -> None:
    scores = pd.Series([0.9, 0.8, 0.2, 0.1, 0.7, None])
    outcomes = pd.Series([1.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    numbers = classification(scores, outcomes, 0.5)
    assert numbers["nodes"] == 5
    assert numbers["precision"] == pytest.approx(2 / 3)
    assert numbers["recall"] == pytest.approx(2 / 3)
    bins = reliability(scores, outcomes)
    assert bins["count"].sum() == 5 and bins["observed"].between(0, 1).all()


def test_verified_outcomes() -> None:
    assert verified_outcome(True, "15", [], "15") == 1.0
    assert verified_outcome(False, None, [{"answer": "16"}, {"answer": "15"}], "15") == 1.0
    assert verified_outcome(False, None, [{"answer": "16"}], "15") == 0.0
    assert verified_outcome(False, None, [], "15") is None
    assert verified_outcome(True, "15", [], None) is None


def test_metrics_are_grouped_by_field() -> None:
    assert flatten({"eval": {"greedy_accuracy": 0.5}, "flag": True, "name": "x"}) == {
        "eval.greedy_accuracy": 0.5
    }
    iterations = pd.DataFrame(
        {
            "id": [1, 2],
            "name": ["a", "b"],
            "metrics": [{"greedy_accuracy": 0.2, "sft_loss": 1.0, "sft_examples": 10, "odd": 3}, {}],
        }
    )
    charts = grouped(metric_table(iterations))
    # Keys that are no field of IterationMetrics are not guessed at from their words.
    assert {title: sorted(frame.columns) for title, frame in charts.items()} == {
        "Other metrics": ["greedy_accuracy", "odd", "sft_examples", "sft_loss"]
    }
    loop = {  # as the improve loop writes them
        "accuracy": {"greedy": 0.2, "mcts": 0.3},
        "critics": {"value": {"precision": 0.5, "recall": 0.4, "ece": 0.1}},
        "data": {"sft_examples": 9},
        "loss": {"sft": 0.7},
        "tokens": {"greedy": 100.0},
        "train_search": {"solved": 0.1, "tokens": 800.0},
    }
    charts = grouped(metric_table(pd.DataFrame({"id": [1], "name": ["a"], "metrics": [loop]})))
    assert {title: sorted(frame.columns) for title, frame in charts.items()} == {
        "Accuracy on held-out problems": ["accuracy.greedy", "accuracy.mcts"],
        "Critics (precision, recall, ECE)": [
            "critics.value.ece",
            "critics.value.precision",
            "critics.value.recall",
        ],
        "Training data sizes": ["data.sft_examples"],
        "Training losses": ["loss.sft"],
        "Generated tokens per problem": ["tokens.greedy", "train_search.tokens"],
        "Other metrics": ["train_search.solved"],
    }


def test_cli_arguments_pass_only_changed_settings() -> None:
    from engine.config import SearchConfig

    defaults = SearchConfig()
    changed = defaults.with_overrides(simulations=6, c=1.5, termination=("newline", "formula")).to_dict()
    flags = config_arguments(changed, defaults)
    assert flags[:4] == ["--simulations", "6", "--seed", "0"]
    assert "--c" in flags and flags[flags.index("--termination") + 1 : flags.index("--termination") + 3] == [
        "newline",
        "formula",
    ]
    assert "--similarity-threshold" not in flags
    arguments = search_arguments(
        db_url="sqlite:///x.db", model="m", task="arithmetic", question="2+2?", answer="4"
    )
    assert arguments[arguments.index("--question") + 1] == "2+2?" and "--index" not in arguments


def test_launch_binds_localhost_by_default() -> None:
    command = app_command(port=8555)
    assert command[command.index("--server.address") + 1] == "127.0.0.1"
    assert command[command.index("--server.port") + 1] == "8555"


def test_stale_running_run_is_shown_as_stopped() -> None:
    now = datetime.now(UTC)
    assert run_state("running", now - timedelta(seconds=5), None, now) == "running"
    assert run_state("running", now - timedelta(seconds=90), None, now) == "stopped (no heartbeat)"
    assert (
        run_state("running", (now - timedelta(seconds=90)).replace(tzinfo=None), None, now)
        == "stopped (no heartbeat)"
    )
    assert run_state("completed", now - timedelta(days=3), None, now) == "completed"


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_run_whose_process_is_gone_is_stopped_before_its_heartbeat_ages() -> None:
    now = datetime.now(UTC)
    fresh = now - timedelta(seconds=5)
    assert run_state("running", fresh, os.getpid(), now) == "running"
    assert run_state("running", fresh, _dead_pid(), now) == "stopped (no heartbeat)"
    assert run_state("running", now - timedelta(seconds=90), os.getpid(), now) == "stopped (no heartbeat)"


def test_chart_events_in_every_customdata_shape() -> None:
    assert selected_node({"selection": {"points": [{"customdata": {"0": 7, "1": -1}}]}}) == 7
    assert selected_node({"selection": {"points": [{"customdata": 5}]}}) == 5
    assert selected_node({"selection": {"points": [{"customdata": ["x"]}, {"customdata": [2]}]}}) == 2


def test_labelled_nodes_are_marked_beside_them() -> None:
    snapshot = TreeSnapshot(make_nodes([-1, 0, 0, 1]), NO_FILTERED, None)
    figure = build_tree_figure(snapshot, marks={1: "correct", 3: "incorrect", 9: "unsure"})
    marks = {trace.name: list(trace.text) for trace in figure.data if trace.mode == "text"}
    assert marks == {"✓ labelled correct": ["<b>✓</b>"], "✗ labelled incorrect": ["<b>✗</b>"]}  # 9: no node
    assert not any(trace.mode == "text" for trace in build_tree_figure(snapshot).data)
