"""Credit per token: which improve rounds trained a DPO policy (no model), and
``canopy credit`` on a real smollm2-135m tree: the reference's teacher-forced
log-probs equal the ones the search stored, and each token's reward is
``beta * (log pi - log pi_ref)``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from sqlmodel import Session

from canopy.cli import main as cli_main
from engine.api import build_components, search_problem
from engine.config import SearchConfig
from engine.models import prepare_hf_dir, resolve_model
from engine.types import Problem
from store.db import make_engine
from store.iterations import Checkpoints, IterationMetrics
from store.schema import Iteration
from store.tokens import dpo_round, dpo_rounds, tree_tokens
from training.checkpoints import write_marker

MODEL = "smollm2-135m"
BETA = 0.5


def _metrics(policy: str, *, done: list[str], skipped: dict[str, str] | None = None) -> IterationMetrics:
    return IterationMetrics(
        config={"model": MODEL, "dpo": True, "dpo_train": {"beta": BETA}},
        round=1,
        checkpoints=Checkpoints(policy=policy),
        done=done,
        skipped=skipped or {},
    )


def test_only_rounds_that_trained_a_dpo_policy_count(tmp_path: Path) -> None:
    trained = _metrics("/ckpt/iteration-2/dpo", done=["search", "mine", "sft", "dpo"])
    assert dpo_round(2, "iter-2", trained).policy == "/ckpt/iteration-2/dpo"
    assert dpo_round(2, "iter-2", trained).beta == BETA
    skipped = _metrics("/ckpt/sft", done=["sft", "dpo"], skipped={"dpo": "no dpo examples were mined"})
    assert dpo_round(3, "iter-3", skipped) is None
    assert dpo_round(4, "iter-4", _metrics("/ckpt/sft", done=["search", "mine", "sft"])) is None
    engine = make_engine(f"sqlite:///{tmp_path / 'rounds.db'}")
    with Session(engine) as session:
        for name, metrics in (("a", trained), ("b", skipped), ("c", trained)):
            session.add(Iteration(name=name, model=MODEL, metrics=metrics.to_dict()))
        session.commit()
    assert [(found.iteration_id, found.name) for found in dpo_rounds(engine)] == [(3, "c"), (1, "a")]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """A small real tree on smollm2-135m (hf), its nodes' token log-probs stored;
    the critics are off, as only the options matter here."""
    url = f"sqlite:///{tmp_path_factory.mktemp('credit') / 'credit.db'}"
    config = SearchConfig(
        simulations=2,
        max_option_tokens=10,
        rollouts=0,
        weight_prm=0.0,
        weight_orm=0.0,
        weight_tool=0.0,
        root_min_children=2,
        root_max_children=2,
        similarity="edit",
        seed=3,
    )
    result = search_problem(
        make_engine(url),
        Problem("What is 6 * 7 - 2?", answer="40", task="custom"),
        model=MODEL,
        config=config,
        components=build_components(config, model=MODEL),
    )
    return url, result.tree_id


def _dpo_policy(folder: Path) -> Path:
    """A "DPO policy" that differs from smollm2 only in its RMSNorm epsilon: the
    weights are the base's own files (linked, not copied), yet every token's
    log-prob moves a little, so the rewards are small and nonzero."""
    base = prepare_hf_dir(resolve_model(MODEL))
    folder.mkdir()
    for source in base.iterdir():
        if source.is_file() and source.name != "config.json":
            (folder / source.name).symlink_to(source)
    config = json.loads((base / "config.json").read_text())
    config["rms_norm_eps"] = 1e-2
    (folder / "config.json").write_text(json.dumps(config))
    write_marker(folder, kind="dpo", base_model=MODEL, metrics={})
    return folder


@pytest.mark.slow
def test_canopy_credit_reads_each_token_under_the_policy_and_its_reference(
    searched: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url, tree_id = searched
    engine = make_engine(url, create=False)
    policy = _dpo_policy(tmp_path / "dpo")
    with Session(engine) as session:
        rows = [
            Iteration(
                name="iter-1", model=MODEL, metrics=_metrics(str(policy), done=["sft", "dpo"]).to_dict()
            ),
            Iteration(name="iter-2", model=MODEL, metrics=_metrics(str(policy), done=["sft"]).to_dict()),
        ]
        session.add_all(rows)
        session.commit()
        dpo_id, plain_id = rows[0].id, rows[1].id

    assert (
        cli_main(["credit", "--db", url, "--tree", str(tree_id), "--iteration", str(dpo_id), "--json"]) == 0
    )
    credit = json.loads(capsys.readouterr().out)
    assert (credit["beta"], credit["policy"], credit["reference"]) == (BETA, str(policy), MODEL)
    options = [node for node in tree_tokens(engine, tree_id) if node.parent >= 0]
    assert len(options) >= 2 and set(credit["nodes"]) == {str(node.index) for node in options}
    for node in options:
        numbers = credit["nodes"][str(node.index)]
        assert len(numbers["policy"]) == len(numbers["reference"]) == len(node.token_ids)
        # The reference is the model that searched: teacher forcing re-reads what it sampled.
        assert numbers["reference"] == pytest.approx(list(node.logprobs), abs=2e-3)
        assert numbers["reward"] == pytest.approx(
            [
                BETA * (mine - theirs)
                for mine, theirs in zip(numbers["policy"], numbers["reference"], strict=True)
            ]
        )
    rewards = [reward for numbers in credit["nodes"].values() for reward in numbers["reward"]]
    assert all(math.isfinite(reward) for reward in rewards) and max(map(abs, rewards)) > 1e-4

    assert cli_main(["credit", "--db", url, "--tree", str(tree_id), "--iteration", str(plain_id)]) == 2
    error = capsys.readouterr().err
    assert (
        f"iteration {plain_id} trained no policy with DPO" in error and len(error.strip().splitlines()) == 1
    )
    (policy / "canopy_checkpoint.json").unlink()
    assert cli_main(["credit", "--db", url, "--tree", str(tree_id), "--iteration", str(dpo_id)]) == 2
    assert "DPO checkpoint" in capsys.readouterr().err
