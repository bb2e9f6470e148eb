"""The settings of ``canopy improve`` and the problems each round works on."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from engine.config import ConfigError, SearchConfig
from engine.types import Problem
from training.dpo_config import DPOTrainConfig
from training.mine_config import MineConfig
from training.rubric_config import RubricTrainConfig
from training.sft_config import SFTTrainConfig
from training.value_config import ValueTrainConfig

LOOP_BACKENDS = ("hf", "llamacpp", "vllm")
"""Backends that load each round's checkpoint themselves."""


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class ImproveConfig:
    """Everything one ``canopy improve`` needs; stored with every iteration so a
    resume runs with the same settings. Validated on construction."""

    model: str = field(metadata=_help("Starting policy: a preset, local HF directory or .gguf file."))
    backend: str = field(
        default="hf",
        metadata=_help(
            "Backend of the searches and evaluations: hf, llamacpp (a trained policy is converted "
            "to GGUF once) or vllm. Training always runs on transformers."
        ),
    )
    task: str = field(default="arithmetic", metadata=_help("arithmetic or gsm8k."))
    data: str | None = field(default=None, metadata=_help("GSM8K-format JSONL file (task gsm8k)."))
    steps: int = field(default=2, metadata=_help("Arithmetic difficulty: operations per problem."))
    max_number: int = field(default=20, metadata=_help("Arithmetic difficulty: largest operand."))
    iterations: int = field(default=1, metadata=_help("Improvement rounds after the base evaluation."))
    train_problems: int = field(default=20, metadata=_help("Problems searched per round (fresh each round)."))
    eval_problems: int = field(default=20, metadata=_help("Held-out problems, the same every round."))
    max_tokens: int = field(default=256, metadata=_help("Token cap of a greedy held-out answer."))
    dpo: bool = field(default=False, metadata=_help("Also train the policy with DPO on sibling pairs."))
    checkpoints: str = field(default="", metadata=_help("Folder for the rounds' checkpoints."))
    search: SearchConfig = field(default_factory=SearchConfig, metadata=_help("MCTS settings."))
    mine: MineConfig = field(default_factory=MineConfig, metadata=_help("What becomes training data."))
    sft: SFTTrainConfig = field(default_factory=SFTTrainConfig, metadata=_help("Policy SFT."))
    dpo_train: DPOTrainConfig = field(default_factory=DPOTrainConfig, metadata=_help("Policy DPO."))
    value: ValueTrainConfig = field(default_factory=ValueTrainConfig, metadata=_help("Value head."))
    prm: RubricTrainConfig = field(default_factory=RubricTrainConfig, metadata=_help("Process reward model."))
    orm: RubricTrainConfig = field(default_factory=RubricTrainConfig, metadata=_help("Outcome reward model."))

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(bool(self.model.strip()), "model is empty; pass a preset such as smollm2-135m")
        need(
            self.backend in LOOP_BACKENDS,
            f"backend must be one of {', '.join(LOOP_BACKENDS)}, got {self.backend!r} "
            "(the openai backend serves one fixed model, not each round's checkpoint)",
        )
        need(self.task in ("arithmetic", "gsm8k"), f"task must be arithmetic or gsm8k, got {self.task!r}")
        need(self.task == "gsm8k" or self.data is None, "--data is for task gsm8k only")
        need(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        need(self.train_problems >= 1, f"train_problems must be >= 1, got {self.train_problems}")
        need(self.eval_problems >= 1, f"eval_problems must be >= 1, got {self.eval_problems}")
        need(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")
        need(bool(self.checkpoints), "checkpoints folder is empty; pass --checkpoints DIR")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImproveConfig:
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown improve setting(s): {', '.join(unknown)}")
        values = dict(data)
        # Sections (search, mine, the trainers) are the fields whose default is a settings class.
        for spec in fields(cls):
            section = values.get(spec.name)
            if spec.default_factory is not MISSING and isinstance(section, dict):
                kind = spec.default_factory
                values[spec.name] = kind.from_dict(section) if kind is SearchConfig else kind(**section)
        return cls(**values)


def eval_set(config: ImproveConfig) -> list[Problem]:
    """The held-out problems: the test split (arithmetic), or the first
    ``eval_problems`` of the file (gsm8k with ``data``)."""
    from engine.tasks import load_problems

    if config.task == "gsm8k" and config.data:
        return load_problems("gsm8k", data=config.data, count=config.eval_problems)
    return load_problems(
        config.task,
        split="test",
        count=config.eval_problems,
        steps=config.steps,
        max_number=config.max_number,
    )


def train_set(config: ImproveConfig, round_number: int) -> list[Problem]:
    """Round ``round_number``'s training problems (1-based), disjoint from the
    held-out ones and from other rounds' (as far as the source has problems)."""
    from engine.tasks import TaskError, load_problems

    start = (round_number - 1) * config.train_problems
    if config.task == "gsm8k" and config.data:
        start += config.eval_problems
        problems = load_problems("gsm8k", data=config.data, count=start + config.train_problems)[start:]
    else:
        problems = load_problems(
            config.task,
            split="train",
            count=start + config.train_problems,
            steps=config.steps,
            max_number=config.max_number,
        )[start:]
    if not problems:
        raise TaskError(
            f"no training problems left for round {round_number}: the source has {start} or fewer"
        )
    return problems
