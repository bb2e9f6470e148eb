"""Iteration metrics in one dataclass: every stored format loads, the app charts
its fields, the store's iteration and critic queries, and the improve loop's
stages and resume on fake stages (no model)."""

from __future__ import annotations

import copy
from dataclasses import fields, replace
from pathlib import Path

import pandas as pd
import pytest
from sqlmodel import Session

from app.improve_metrics import CHARTS, flatten, grouped, metric_table
from engine.calibration import verified_outcome
from engine.config import ConfigError
from store import queries, schema
from store.db import StoreError, make_engine
from store.iterations import Checkpoints, IterationMetrics, TrainSearch
from tests.test_mine import APPLES, add_tree
from training import improve as improve_module
from training.checkpoints import TrainResult
from training.improve import ImproveConfig, improve, summary
from training.improve_stages import IterationContext, Stage, round_stages, train_checkpoint

LOOP_ROW = {  # a finished round as the loop has always written it
    "config": {"model": "smollm2-135m", "iterations": 1},
    "round": 1,
    "checkpoints": {"policy": "/c/sft", "value": "/c/value", "prm": None, "orm": "/c/orm"},
    "done": ["search", "mine", "sft", "value", "prm", "orm", "eval_greedy", "eval_mcts", "critics"],
    "runs": {"search": 3, "eval_greedy": 4, "eval_mcts": 5},
    "seconds": {"search": 12.5, "mine": 0.1},
    "train_search": {"solved": 0.25, "tokens": 800.0},
    "data": {"sft_examples": 9, "prm_examples": 0, "tree_count": 4},
    "skipped": {"prm": "no prm examples were mined"},
    "loss": {"sft": 0.7, "sft_eval": 0.9, "value": 0.05},
    "accuracy": {"greedy": 0.2, "mcts": 0.3},
    "tokens": {"greedy": 100.0, "mcts": 900.0},
    "critics": {"value": {"precision": 0.5, "recall": None, "ece": 0.1}},
}
FIRST_FORMAT_ROW = {  # the loop's first release named the training search "train_accuracy"
    "config": {"model": "smollm2-135m"},
    "round": 1,
    "checkpoints": {"policy": "/c/sft", "value": None, "prm": None, "orm": None},
    "done": ["search"],
    "runs": {"search": 3},
    "train_accuracy": {"mcts": 0.5},
    "error": "RuntimeError: killed",
}


# -- the dataclass ----------------------------------------------------------------


def test_stored_rows_load_and_the_loop_format_round_trips() -> None:
    metrics = IterationMetrics.from_dict(copy.deepcopy(LOOP_ROW))
    assert metrics.checkpoints == Checkpoints(policy="/c/sft", value="/c/value", orm="/c/orm")
    assert metrics.train_search == TrainSearch(solved=0.25, tokens=800.0)
    assert metrics.round == 1 and metrics.runs["eval_mcts"] == 5 and metrics.other == {}
    assert metrics.to_dict() == LOOP_ROW

    first = IterationMetrics.from_dict(FIRST_FORMAT_ROW)
    assert first.train_search == TrainSearch(solved=0.5, tokens=None)
    assert first.error == "RuntimeError: killed" and first.other == {}

    by_hand = IterationMetrics.from_dict({"greedy_accuracy": 0.25, "note": "x", "accuracy": {"mcts": 0.5}})
    assert by_hand.checkpoints is None and by_hand.accuracy == {"mcts": 0.5}
    assert by_hand.other == {"greedy_accuracy": 0.25, "note": "x"}
    assert by_hand.to_dict()["greedy_accuracy"] == 0.25, "unknown keys are written back as they were"
    assert IterationMetrics.from_dict(None) == IterationMetrics()


def test_measurements_leave_the_bookkeeping_out() -> None:
    measured = IterationMetrics.from_dict(LOOP_ROW).measurements()
    assert measured == {
        "accuracy.greedy": 0.2,
        "accuracy.mcts": 0.3,
        "tokens.greedy": 100.0,
        "tokens.mcts": 900.0,
        "data.sft_examples": 9.0,
        "data.prm_examples": 0.0,
        "data.tree_count": 4.0,
        "loss.sft": 0.7,
        "loss.sft_eval": 0.9,
        "loss.value": 0.05,
        "critics.value.precision": 0.5,
        "critics.value.ece": 0.1,
        "train_search.solved": 0.25,
        "train_search.tokens": 800.0,
    }


# -- the app's charts -------------------------------------------------------------


def test_every_chart_draws_fields_of_the_dataclass() -> None:
    nested = {"train_search": {spec.name for spec in fields(TrainSearch)}}
    names = {spec.name for spec in fields(IterationMetrics)}
    for paths in CHARTS.values():
        for path in paths:
            field_name, _, part = path.partition(".")
            assert field_name in names, path
            assert not part or part in nested[field_name], path


def test_improve_charts_read_stored_rows_through_the_dataclass() -> None:
    iterations = pd.DataFrame(
        {
            "id": [1, 2, 3],
            "name": ["base", "round 1", ""],
            "metrics": [FIRST_FORMAT_ROW, LOOP_ROW, {"greedy_accuracy": 0.25, "flag": True}],
        }
    )
    table = metric_table(iterations)
    assert list(table.index) == ["1: base", "2: round 1", "3"]
    charts = {title: sorted(frame.columns) for title, frame in grouped(table).items()}
    assert charts == {
        "Accuracy on held-out problems": ["accuracy.greedy", "accuracy.mcts"],
        "Critics (precision, recall, ECE)": ["critics.value.ece", "critics.value.precision"],
        "Training data sizes": ["data.prm_examples", "data.sft_examples", "data.tree_count"],
        "Training losses": ["loss.sft", "loss.sft_eval", "loss.value"],
        "Generated tokens per problem": ["tokens.greedy", "tokens.mcts", "train_search.tokens"],
        "Other metrics": ["greedy_accuracy", "train_search.solved"],
    }
    assert table.loc["1: base", "train_search.solved"] == 0.5, "the first format's training search"
    assert flatten(None) == {} and flatten({"config": {"iterations": 2}, "round": 1}) == {}


# -- store queries ----------------------------------------------------------------


@pytest.fixture
def engine(db_url):
    """A fresh store, on SQLite and on PostgreSQL (``tests/conftest.py``)."""
    return make_engine(db_url)


def test_iteration_rows_are_created_updated_and_chained(engine) -> None:
    metrics = IterationMetrics(config={"model": "m"}, checkpoints=Checkpoints(policy="m"))
    base = queries.create_iteration(engine, name="base", model="m", parent_id=None, metrics=metrics)
    child = queries.create_iteration(engine, name="round 1", model="m", parent_id=base, metrics=metrics)
    metrics.accuracy["greedy"] = 0.5
    queries.update_iteration(engine, child, metrics=metrics, stage="eval_greedy")
    queries.update_iteration(engine, child, status="completed", checkpoint_path="/c")
    row = queries.load_iteration(engine, child)
    assert (row.status, row.stage, row.checkpoint_path) == ("completed", "eval_greedy", "/c")
    assert IterationMetrics.from_dict(row.metrics) == metrics
    assert [r.id for r in queries.iteration_chain(engine, child)] == [base, child]
    with pytest.raises(StoreError, match="no iteration 99"):
        queries.load_iteration(engine, 99)


def test_critic_nodes_carry_gold_and_verified_outcomes(engine) -> None:
    tree_id = add_tree(engine, APPLES, gold="7")
    with Session(engine) as session:
        run_id = session.get(schema.Tree, tree_id).run_id
    nodes = queries.critic_nodes(engine, [run_id], outcome=verified_outcome)
    assert list(nodes.columns) == list(queries.CRITIC_NODE_COLUMNS)
    outcomes = dict(zip(nodes["index"], nodes["outcome"], strict=True))
    assert outcomes[3] == 1.0 and outcomes[4] == 0.0, "terminal nodes: their own answer"
    assert outcomes[2] == 1.0, "a tie of rollout answers counts as reaching the gold"
    assert pd.isna(outcomes[1]) and 0 not in outcomes, "unknown outcome; the root is left out"
    assert set(nodes["gold"]) == {"7"}
    empty = queries.critic_nodes(engine, [run_id + 1], outcome=verified_outcome)
    assert empty.empty and list(empty.columns) == list(queries.CRITIC_NODE_COLUMNS)


# -- the loop on fake stages ------------------------------------------------------


def _config(tmp_path: Path, **settings) -> ImproveConfig:
    return ImproveConfig(model="start", checkpoints=str(tmp_path / "checkpoints"), **settings)


def test_round_stages_in_order() -> None:
    config = ImproveConfig(model="m", checkpoints="c")
    assert [stage.name for stage in round_stages(config, 0)] == ["eval_greedy", "eval_mcts", "critics"]
    assert [stage.name for stage in round_stages(config, 1)] == [
        "search", "mine", "sft", "value", "prm", "orm", "eval_greedy", "eval_mcts", "critics",
    ]  # fmt: skip
    with_dpo = [stage.name for stage in round_stages(replace(config, dpo=True), 2)]
    assert with_dpo[2:4] == ["sft", "dpo"]


def test_loop_records_stages_survives_a_crash_and_resumes(
    tmp_path: Path, engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def evaluate(context: IterationContext) -> None:
        calls.append(f"evaluate {context.round_number}")
        with context.recording() as metrics:
            metrics.accuracy["greedy"] = 0.1 * (context.round_number + 1)

    def train(context: IterationContext) -> None:
        calls.append("train")
        if calls.count("train") == 1:
            raise RuntimeError("simulated crash")
        with context.recording() as metrics:
            metrics.checkpoints = replace(metrics.checkpoints, policy="trained")

    def fake_stages(config: ImproveConfig, round_number: int) -> list[Stage]:
        trained = [Stage("search", lambda context: calls.append("search")), Stage("sft", train)]
        return [*(trained if round_number else []), Stage("eval_greedy", evaluate)]

    monkeypatch.setattr(improve_module, "round_stages", fake_stages)
    monkeypatch.setattr(improve_module, "eval_set", lambda config: [])
    with pytest.raises(RuntimeError, match="simulated crash"):
        improve(engine, _config(tmp_path), log=lambda message: None)
    base_id, round_id = 1, 2
    failed = queries.load_iteration(engine, round_id)
    metrics = IterationMetrics.from_dict(failed.metrics)
    assert failed.status == "failed" and failed.name == "round 1"
    assert metrics.done == ["search"] and metrics.error == "RuntimeError: simulated crash"
    assert metrics.round == 1 and metrics.checkpoints == Checkpoints(policy="start")

    assert improve(engine, resume=round_id, log=lambda message: None) == [base_id, round_id]
    assert calls == ["evaluate 0", "search", "train", "train", "evaluate 1"], "finished stages are not redone"
    done = queries.load_iteration(engine, round_id)
    metrics = IterationMetrics.from_dict(done.metrics)
    assert (done.status, done.stage, done.checkpoint_path) == ("completed", "done", "trained")
    assert metrics.done == ["search", "sft", "eval_greedy"] and set(metrics.seconds) == set(metrics.done)
    rows = summary(engine, [base_id, round_id])
    assert [row["accuracy"] for row in rows] == [{"greedy": 0.1}, {"greedy": 0.2}]
    assert rows[0]["checkpoint"] == "start"
    with pytest.raises(ConfigError, match="not both"):
        improve(engine, _config(tmp_path), resume=round_id)


def _round_context(engine, tmp_path: Path, checkpoints: Checkpoints) -> tuple[IterationContext, list[str]]:
    config = _config(tmp_path)
    metrics = IterationMetrics(config=config.to_dict(), round=1, checkpoints=checkpoints)
    iteration_id = queries.create_iteration(
        engine, name="round 1", model="start", parent_id=None, metrics=metrics
    )
    lines: list[str] = []
    context = IterationContext(
        engine=engine, config=config, iteration_id=iteration_id, round_number=1, held_out=[], log=lines.append
    )
    return context, lines


def _add_examples(engine, iteration_id: int, kind: str, count: int) -> None:
    with Session(engine) as session:
        for index in range(count):
            session.add(schema.TrainingExample(iteration_id=iteration_id, kind=kind, payload={"n": index}))
        session.commit()


def test_train_checkpoint_replaces_its_slot_or_records_why_not(tmp_path: Path, engine) -> None:
    context, lines = _round_context(engine, tmp_path, Checkpoints(policy="/c/sft", prm=None))
    seen = {}

    def fake_train(examples, *, base_model, output_dir, config, progress=None) -> TrainResult:
        seen.update(examples=len(examples), base=base_model, config=config)
        progress("step 1/1")
        if base_model == "/c/sft":
            raise ConfigError("every value label is True")
        return TrainResult(
            output_dir=Path(output_dir),
            examples=len(examples),
            steps=1,
            train_loss=0.5,
            eval_loss=0.6,
            seconds=0.1,
        )

    _add_examples(engine, context.iteration_id, "prm", 3)
    train_checkpoint(context, kind="prm", train=fake_train, settings=context.config.prm)
    assert seen == {"examples": 3, "base": "start", "config": context.config.prm}, (
        "a new PRM starts as the model"
    )
    metrics = context.metrics()
    assert metrics.checkpoints.prm == str(
        Path(context.config.checkpoints) / f"iteration-{context.iteration_id}" / "prm"
    )
    assert metrics.loss == {"prm": 0.5, "prm_eval": 0.6}

    _add_examples(engine, context.iteration_id, "value", 2)
    train_checkpoint(context, kind="value", train=fake_train, settings=context.config.value)
    assert seen["base"] == "/c/sft", "the value head reads the policy"
    train_checkpoint(context, kind="orm", train=fake_train, settings=context.config.orm)
    metrics = context.metrics()
    assert metrics.skipped == {"value": "every value label is True", "orm": "no orm examples were mined"}
    assert metrics.checkpoints.value is None and metrics.checkpoints.orm is None
    assert "  orm: skipped, no orm examples were mined" in lines
