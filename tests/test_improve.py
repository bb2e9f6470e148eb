"""The improve loop: settings from flags and files, and a tiny real loop on smollm2-135m
that trains, evaluates, survives a crash and resumes."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sqlmodel import Session, select

from canopy.cli import main as cli_main
from canopy.cli import make_parser
from canopy.improve_cmd import improve_config
from engine.config import ConfigError
from store import schema
from store.db import make_engine
from training import improve_stages
from training.improve import ImproveConfig, improve

SMOLLM = "smollm2-135m"


def _config(args: list[str]) -> ImproveConfig:
    return improve_config(make_parser().parse_args(["improve", *args]))


def test_flags_and_config_file_build_the_settings(tmp_path: Path) -> None:
    settings = tmp_path / "improve.toml"
    settings.write_text(
        'task = "arithmetic"\ntrain_problems = 7\n[search]\nsimulations = 3\n[sft]\nmax_steps = 5\n'
        "[mine]\nuse_gold = true\n[dpo]\nbeta = 0.3\n"
    )
    config = _config(
        [
            "--model",
            SMOLLM,
            "--config",
            str(settings),
            "--sft-max-steps",
            "9",
            "--c",
            "2.0",
            "--iterations",
            "2",
        ]
    )
    assert config.model == SMOLLM
    assert config.train_problems == 7  # from the file
    assert config.iterations == 2
    assert config.search.simulations == 3 and config.search.c == 2.0
    assert config.sft.max_steps == 9  # the flag wins over the file
    assert config.mine.use_gold is True
    assert config.dpo_train.beta == 0.3
    assert config.checkpoints  # defaults to the cache
    # The stored form round-trips (a resume rebuilds the config from it).
    assert ImproveConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_bad_settings_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'c.db'}"
    for args, message in (
        (["--iterations", "0"], "iterations must be >= 1"),
        (["--train-problems", "0"], "train_problems must be >= 1"),
        (["--sft-learning-rate", "-1"], "learning_rate"),
        (["--data", "x.jsonl"], "--data is for task gsm8k only"),
        (["--resume", "99"], "no iteration 99"),
    ):
        assert cli_main(["improve", "--model", SMOLLM, "--db", db, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="unknown improve setting"):
        ImproveConfig.from_dict({"model": SMOLLM, "checkpoints": "x", "bogus": 1})


def test_metrics_bookkeeping_is_not_charted() -> None:
    from app.improve_metrics import flatten

    flat = flatten(
        {"config": {"iterations": 1}, "runs": {"search": 3}, "accuracy": {"greedy": 0.5}, "round": 1}
    )
    assert flat == {"accuracy.greedy": 0.5}


def _tiny(tmp_path: Path) -> ImproveConfig:
    return ImproveConfig.from_dict(
        {
            "model": SMOLLM,
            "task": "arithmetic",
            "steps": 1,
            "max_number": 5,
            "iterations": 1,
            "train_problems": 2,
            "eval_problems": 1,
            "max_tokens": 24,
            "checkpoints": str(tmp_path / "checkpoints"),
            "search": {
                "simulations": 2,
                "max_option_tokens": 24,
                "max_depth": 3,
                "rollouts": 1,
                "rollout_max_tokens": 48,
                "root_min_children": 2,
                "root_max_children": 2,
                "min_children": 2,
                "max_children": 2,
                "similarity": "edit",
            },
            # Any answered trajectory passes, so SFT has data even when the
            # small model never reaches the gold answer.
            "mine": {"use_gold": False, "sft_orm_threshold": 0.0},
            "sft": {"max_steps": 2, "max_length": 160, "batch_size": 2},
            "value": {"epochs": 5},
            "prm": {"max_steps": 1, "max_length": 192, "batch_size": 2},
            "orm": {"max_steps": 1, "max_length": 192, "batch_size": 2},
        }
    )


@pytest.mark.slow
def test_tiny_loop_trains_evaluates_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On llamacpp where it is installed (CI): the round's trained policy is
    converted to GGUF once and searched there; training stays on transformers."""
    from engine import gguf_export

    engine = make_engine(f"sqlite:///{tmp_path / 'loop.db'}")
    on_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    config = replace(_tiny(tmp_path), backend="llamacpp" if on_llama_cpp else "hf")
    conversions: list[Path] = []
    real_convert = gguf_export.hf_to_gguf

    def counted_convert(hf_dir, out, **kwargs):
        conversions.append(Path(hf_dir))
        return real_convert(hf_dir, out, **kwargs)

    monkeypatch.setattr(gguf_export, "hf_to_gguf", counted_convert)
    real_train = improve_stages.train_checkpoint
    crashed = []

    def crash_once_in_value(context, *, kind, **trainer):
        if kind == "value" and not crashed:
            crashed.append(context.iteration_id)
            raise RuntimeError("simulated crash while training the value head")
        return real_train(context, kind=kind, **trainer)

    monkeypatch.setattr(improve_stages, "train_checkpoint", crash_once_in_value)
    with pytest.raises(RuntimeError, match="simulated crash"):
        improve(engine, config, log=lambda message: None)
    with Session(engine) as session:
        rows = session.exec(select(schema.Iteration).order_by(schema.Iteration.id)).all()
    base, failed = rows
    assert base.status == "completed" and base.name == "base"
    assert failed.status == "failed" and "simulated crash" in failed.metrics["error"]
    assert failed.metrics["done"][:3] == ["search", "mine", "sft"]
    search_run = failed.metrics["runs"]["search"]

    ids = improve(engine, resume=failed.id, log=lambda message: None)
    assert ids == [base.id, failed.id]
    with Session(engine) as session:
        done = session.get(schema.Iteration, failed.id)
        examples = session.exec(
            select(schema.TrainingExample).where(schema.TrainingExample.iteration_id == failed.id)
        ).all()
        runs = session.exec(select(schema.Run).where(schema.Run.iteration_id == failed.id)).all()
    assert done.status == "completed" and done.stage == "done"
    assert done.metrics["runs"]["search"] == search_run  # the finished search was not redone
    assert {run.id for run in runs} == set(done.metrics["runs"].values())
    assert {"sft", "value"} <= {example.kind for example in examples}
    for name in ("greedy", "mcts"):
        assert 0.0 <= done.metrics["accuracy"][name] <= 1.0
        assert 0.0 <= base.metrics["accuracy"][name] <= 1.0
    assert done.metrics["data"]["sft_examples"] >= 1

    # The policy's weights changed, and the new checkpoints are what the round evaluated with.
    checkpoints = done.metrics["checkpoints"]
    assert Path(checkpoints["policy"]) == Path(config.checkpoints) / f"iteration-{done.id}" / "sft"
    assert done.checkpoint_path == checkpoints["policy"]
    from engine.models import prepare_hf_dir, resolve_model

    before = load_file(prepare_hf_dir(resolve_model(SMOLLM)) / "model.safetensors")
    after = load_file(Path(checkpoints["policy"]) / "model.safetensors")
    changed = [name for name in before if name in after and not torch.equal(before[name], after[name])]
    assert changed, "SFT left every weight unchanged"
    assert Path(checkpoints["value"], "value_head.pt").is_file()
    if on_llama_cpp:  # converted once (by the first evaluation after the crash), reused by the next
        assert conversions == [Path(checkpoints["policy"]).resolve()]
        assert Path(checkpoints["policy"], "gguf", "model-q8_0.gguf").is_file()
    eval_run = done.metrics["runs"]["eval_mcts"]
    with Session(engine) as session:
        run = session.get(schema.Run, eval_run)
    assert run.critics["value"]["checkpoint"] == checkpoints["value"]
