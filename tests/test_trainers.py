"""The trainers on ``smollm2-135m``: a few steps each on tiny data change the
weights, save a checkpoint that loads back, and a crash leaves the previous
checkpoint intact. Config and payload errors are checked without a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.config import ConfigError
from engine.critics.generative import ORM_SYSTEM, PRM_SYSTEM, orm_prompt, prm_prompt
from engine.types import TrajectoryRequest
from training.checkpoints import MARKER_FILE, atomic_directory, is_complete, read_marker, write_marker
from training.dpo_config import DPOTrainConfig
from training.dpo_trainer import train_dpo
from training.rubric_config import RubricTrainConfig
from training.rubric_trainer import train_orm, train_prm
from training.sft_config import SFTTrainConfig
from training.sft_trainer import train_sft
from training.value_config import ValueTrainConfig
from training.value_trainer import train_value

MODEL = "smollm2-135m"
LORA_WEIGHT = "model.layers.0.self_attn.q_proj.weight"
QUESTION = "Tom has 3 bags with 4 apples each. He eats 2. How many apples are left?"
GOOD = ["3 * 4 = 12\n", "12 - 2 = 10\n", "The answer is 10."]
BAD = ["3 * 4 = 7\n", "7 - 2 = 5\n", "The answer is 5."]

SFT_EXAMPLES = [
    {"question": QUESTION, "steps": GOOD, "answer": "10", "score": 1.0, "source": "verified"},
    {"question": "What is 5 + 6?", "steps": ["5 + 6 = 11\n", "The answer is 11."], "answer": "11",
     "score": 0.9, "source": "orm"},
    {"question": "What is 9 - 4?", "steps": ["9 - 4 = 5\n", "The answer is 5."], "answer": None,
     "score": 0.8, "source": "orm"},
    {"question": "What is 2 * 7?", "steps": ["2 * 7 = 14\n", "The answer is 14."], "answer": "14",
     "score": 1.0, "source": "verified"},
]  # fmt: skip
DPO_EXAMPLES = [
    {"question": QUESTION, "prefix": GOOD[:1], "chosen": GOOD[1], "rejected": "12 - 2 = 9\n",
     "chosen_q": 0.9, "rejected_q": 0.2},
    {"question": QUESTION, "prefix": [], "chosen": GOOD[0], "rejected": BAD[0],
     "chosen_q": 0.8, "rejected_q": 0.1},
    {"question": "What is 5 + 6?", "prefix": ["5 + 6 = 11\n"], "chosen": "The answer is 11.",
     "rejected": "The answer is 12.", "chosen_q": 1.0, "rejected_q": 0.0},
    {"question": "What is 2 * 7?", "prefix": [], "chosen": "2 * 7 = 14\n", "rejected": "2 * 7 = 12\n",
     "chosen_q": 0.7, "rejected_q": 0.3},
]  # fmt: skip
PRM_EXAMPLES = [
    {"question": QUESTION, "steps": GOOD[:1], "label": True, "estimate": 0.9},
    {"question": QUESTION, "steps": GOOD[:2], "label": True, "estimate": 0.8},
    {"question": "What is 5 + 6?", "steps": ["5 + 6 = 11\n"], "label": True, "estimate": 1.0},
    {"question": QUESTION, "steps": BAD[:1], "label": False, "estimate": 0.1},
]
ORM_EXAMPLES = [
    {"question": QUESTION, "steps": GOOD, "label": True},
    {"question": QUESTION, "steps": BAD, "label": False},
    {"question": "What is 5 + 6?", "steps": ["5 + 6 = 11\n", "The answer is 11."], "label": True},
    {"question": "What is 5 + 6?", "steps": ["5 + 6 = 12\n", "The answer is 12."], "label": False},
]
VALUE_EXAMPLES = [
    {"question": QUESTION, "steps": path[:depth], "target": target, "source": "q", "count": depth + 1}
    for path, target in ((GOOD, 0.9), (BAD, 0.1))
    for depth in range(4)
]
FAST = {"max_steps": 2, "max_length": 128, "batch_size": 4, "eval_fraction": 0.0}


def _q_proj(directory: Path) -> torch.Tensor:
    from safetensors import safe_open

    with safe_open(str(directory / "model.safetensors"), framework="pt") as weights:
        return weights.get_tensor(LORA_WEIGHT)


@pytest.fixture(scope="module")
def base_dir() -> Path:
    from engine.models import prepare_hf_dir, resolve_model

    return prepare_hf_dir(resolve_model(MODEL))


@pytest.fixture(scope="module")
def base_policy():
    from engine.policies import load_policy

    return load_policy(MODEL, backend="hf")


def _assert_trained_policy(output: Path, base_dir: Path, kind: str) -> None:
    assert is_complete(output)
    record = read_marker(output)
    assert record["kind"] == kind and record["base_model"] == MODEL
    assert not torch.equal(_q_proj(output), _q_proj(base_dir)), "the LoRA-targeted weight did not change"
    assert (output / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (output / "tokenizer_config.json").read_text()
    )


# -- checkpoints (no model) ------------------------------------------------------


def test_atomic_directory_replaces_the_target_whole(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("one")
        write_marker(staging, kind="sft", base_model=MODEL, metrics={})
    with atomic_directory(target) as staging:
        (staging / "b.txt").write_text("two")
        write_marker(staging, kind="sft", base_model=MODEL, metrics={"train_loss": 1.0})
    assert sorted(p.name for p in target.iterdir()) == sorted(["b.txt", MARKER_FILE])
    assert read_marker(target)["metrics"] == {"train_loss": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"], "staging or retired directories were left behind"


def test_atomic_directory_keeps_the_old_target_on_error(tmp_path: Path) -> None:
    target = tmp_path / "ckpt"
    with atomic_directory(target) as staging:
        (staging / "a.txt").write_text("one")
        write_marker(staging, kind="sft", base_model=MODEL, metrics={})
    with pytest.raises(RuntimeError), atomic_directory(target) as staging:
        (staging / "a.txt").write_text("half-written")
        raise RuntimeError("killed")
    assert (target / "a.txt").read_text() == "one" and is_complete(target)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert not is_complete(tmp_path / "missing")


# -- configs and payloads (no model) ---------------------------------------------


@pytest.mark.parametrize(
    ("make", "bad", "words"),
    [
        (SFTTrainConfig, {"learning_rate": 0}, "learning_rate must be > 0"),
        (SFTTrainConfig, {"lora_r": 0}, "lora_r must be >= 1"),
        (SFTTrainConfig, {"max_steps": 0}, "-1 to run whole epochs"),
        (SFTTrainConfig, {"lora_target_modules": ()}, "e.g. q_proj"),
        (DPOTrainConfig, {"beta": 0}, "beta must be > 0"),
        (DPOTrainConfig, {"lora_dropout": 1.0}, "lora_dropout must be in [0, 1)"),
        (RubricTrainConfig, {"eval_fraction": 1.0}, "eval_fraction must be in [0, 1)"),
        (RubricTrainConfig, {"batch_size": 0}, "batch_size must be >= 1"),
        (ValueTrainConfig, {"inner_size": 0}, "inner_size must be >= 1"),
        (ValueTrainConfig, {"learning_rate": -1.0}, "learning_rate must be > 0"),
    ],
)
def test_configs_reject_bad_values_with_the_fix(make, bad, words) -> None:
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        make(**bad)


def test_configs_carry_help_and_accept_lists() -> None:
    from dataclasses import fields

    for config_class in (SFTTrainConfig, DPOTrainConfig, RubricTrainConfig, ValueTrainConfig):
        assert all(f.metadata.get("help") for f in fields(config_class)), config_class.__name__
    config = SFTTrainConfig(lora_target_modules=["q_proj", "v_proj"])
    assert config.lora_target_modules == ("q_proj", "v_proj")
    assert config.to_dict()["lora_target_modules"] == ["q_proj", "v_proj"]
    assert SFTTrainConfig().to_dict()["full_finetune"] is False


def test_configs_share_the_base_and_keep_their_own_defaults() -> None:
    from training.base_config import FineTuneConfig, TrainConfig

    for config_class in (SFTTrainConfig, DPOTrainConfig, RubricTrainConfig):
        assert issubclass(config_class, FineTuneConfig)
    assert issubclass(ValueTrainConfig, TrainConfig) and not issubclass(ValueTrainConfig, FineTuneConfig)
    dpo, value, rubric = DPOTrainConfig(), ValueTrainConfig(), RubricTrainConfig()
    assert (dpo.learning_rate, dpo.epochs, dpo.beta) == (5e-5, 1.0, 0.1)
    assert (value.learning_rate, value.epochs, value.batch_size, value.eval_fraction) == (1e-3, 30, 64, 0.2)
    assert isinstance(value.epochs, int)
    assert (rubric.learning_rate, rubric.max_length, rubric.balance_classes) == (2e-4, 512, True)
    with pytest.raises(ConfigError, match="the default is 5e-05"):
        DPOTrainConfig(learning_rate=0)


@pytest.mark.parametrize(
    ("train", "config", "examples", "words"),
    [
        (train_sft, SFTTrainConfig(), [], "no sft examples"),
        (train_sft, SFTTrainConfig(), [{"question": "q"}], "lacks steps"),
        (train_dpo, DPOTrainConfig(), [], "no dpo examples"),
        (
            train_dpo,
            DPOTrainConfig(),
            [{**DPO_EXAMPLES[0], "rejected": GOOD[1]}],
            "prefers an option to itself",
        ),
        (train_prm, RubricTrainConfig(), PRM_EXAMPLES[:3], "every prm label is True"),
        (train_prm, RubricTrainConfig(), [{"question": "q", "steps": ["s"]}], "lacks label"),
        (train_orm, RubricTrainConfig(), [], "no orm examples"),
        (train_orm, RubricTrainConfig(), ORM_EXAMPLES[1::2], "every orm label is False"),
        (train_value, ValueTrainConfig(), [], "no value examples"),
        (
            train_value,
            ValueTrainConfig(),
            [{**VALUE_EXAMPLES[0], "target": 1.5}],
            r"targets are returns in \[0, 1\]",
        ),
    ],
)
def test_bad_examples_fail_before_loading_a_model(train, config, examples, words, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=words):
        train(examples, base_model="no/such-model", output_dir=tmp_path / "out", config=config)
    assert not (tmp_path / "out").exists()


# -- training on the real model ---------------------------------------------------


@pytest.mark.slow
def test_sft_trains_lora_and_saves_a_merged_policy(tmp_path: Path, base_dir: Path) -> None:
    from engine.policies import load_policy

    lines: list[str] = []
    output = tmp_path / "sft"
    result = train_sft(
        SFT_EXAMPLES,
        base_model=MODEL,
        output_dir=output,
        config=SFTTrainConfig(**{**FAST, "eval_fraction": 0.25}),
        progress=lines.append,
    )
    assert result.output_dir == output and result.steps == 2 and result.examples == 4
    assert result.train_loss > 0 and result.eval_loss is not None
    assert any(line.startswith("step 2/2") for line in lines)
    _assert_trained_policy(output, base_dir, "sft")

    policy = load_policy(str(output), backend="hf")
    rendered = policy.tokenizer.decode(policy.root_state(QUESTION))
    assert "<|im_start|>assistant" in rendered and QUESTION in rendered, "the chat template was lost"
    (score,) = policy.score_true([(PRM_SYSTEM, "Is 2 + 2 = 4? Answer True or False.")])
    assert 0 <= score <= 1


@pytest.mark.slow
def test_a_crash_mid_training_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    output = tmp_path / "policy"
    with atomic_directory(output) as staging:
        (staging / "config.json").write_text("{}")
        write_marker(staging, kind="sft", base_model=MODEL, metrics={"train_loss": 9.0})
    before = {p.name: p.read_bytes() for p in output.iterdir()}

    def crash(line: str) -> None:
        if line.startswith("step"):
            raise RuntimeError("killed mid-training")

    with pytest.raises(RuntimeError, match="killed mid-training"):
        train_sft(
            SFT_EXAMPLES, base_model=MODEL, output_dir=output, config=SFTTrainConfig(**FAST), progress=crash
        )
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["policy"]


@pytest.mark.slow
def test_dpo_trains_lora_against_the_disabled_adapter(tmp_path: Path, base_dir: Path) -> None:
    output = tmp_path / "dpo"
    result = train_dpo(
        DPO_EXAMPLES, base_model=MODEL, output_dir=output, config=DPOTrainConfig(**{**FAST, "batch_size": 2})
    )
    assert result.steps == 2 and result.eval_loss is None
    _assert_trained_policy(output, base_dir, "dpo")


@pytest.mark.slow
def test_prm_learns_to_say_true_and_loads_as_a_critic(tmp_path: Path, base_dir: Path, base_policy) -> None:
    from engine.policies import load_policy

    request = TrajectoryRequest(question=QUESTION, steps=tuple(GOOD[:2]), finished=False)
    prompt = (PRM_SYSTEM, prm_prompt(request))
    (before,) = base_policy.score_true([prompt])
    output = tmp_path / "prm"
    config = RubricTrainConfig(**{**FAST, "max_steps": 4, "learning_rate": 1e-3, "balance_classes": False})
    result = train_prm(PRM_EXAMPLES, base_model=MODEL, output_dir=output, config=config)
    assert result.steps == 4 and result.examples == 4
    _assert_trained_policy(output, base_dir, "prm")
    (after,) = load_policy(str(output), backend="hf").score_true([prompt])
    assert after > before + 0.05, (before, after)


@pytest.mark.slow
def test_prm_and_orm_balance_skewed_labels(tmp_path: Path, base_dir: Path) -> None:
    output = tmp_path / "orm"
    skewed = [*ORM_EXAMPLES, ORM_EXAMPLES[0], ORM_EXAMPLES[2]]
    result = train_orm(skewed, base_model=MODEL, output_dir=output, config=RubricTrainConfig(**FAST))
    assert result.examples == 8, "4 True and 2 False become 4 and 4"
    _assert_trained_policy(output, base_dir, "orm")
    from engine.policies import load_policy

    request = TrajectoryRequest(question=QUESTION, steps=tuple(GOOD), finished=True)
    (score,) = load_policy(str(output), backend="hf").score_true([(ORM_SYSTEM, orm_prompt(request))])
    assert 0 <= score <= 1


@pytest.mark.slow
def test_value_head_trains_on_frozen_features_and_scores(tmp_path: Path, base_policy) -> None:
    from engine.critics.value import ValueHead, ValueHeadCritic, load_value_head

    config = ValueTrainConfig(
        epochs=30, batch_size=4, learning_rate=1e-3, eval_fraction=0.25, weight_by_count=True
    )
    output = tmp_path / "value"
    result = train_value(VALUE_EXAMPLES, base_model=MODEL, output_dir=output, config=config)
    assert result.steps == 60 and result.eval_loss is not None and result.train_loss > 0
    assert is_complete(output) and read_marker(output)["kind"] == "value"

    head, stored = load_value_head(output)
    assert stored["base_model"] == MODEL
    torch.manual_seed(config.seed)
    initial = ValueHead(head.hidden_size, config.inner_size)
    assert not torch.equal(initial.mlp[0].weight, head.mlp[0].weight)
    good, bad = ValueHeadCritic(head, base_policy).score_states(
        [
            TrajectoryRequest(question=QUESTION, steps=tuple(GOOD[:2]), finished=False),
            TrajectoryRequest(question=QUESTION, steps=tuple(BAD[:2]), finished=False),
        ]
    )
    assert 0 <= bad < good <= 1


def test_value_targets_are_balanced_so_the_head_cannot_collapse() -> None:
    from training.value_trainer import balanced_weights

    targets = torch.tensor([0.0, 0.0, 0.0, 0.2, 1.0, 0.5])
    weights = balanced_weights(targets, torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 3.0]))
    high = targets >= 0.5
    assert torch.isclose(weights[high].sum(), weights[~high].sum())
    assert torch.isclose(weights.sum(), torch.tensor(8.0))  # the total is kept
    assert torch.isclose(weights[5] / weights[4], torch.tensor(3.0))  # and the ratios within a side
    one_sided = torch.tensor([2.0, 1.0])
    assert torch.equal(balanced_weights(torch.tensor([0.0, 0.1]), one_sided), one_sided)
