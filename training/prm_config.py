"""Settings of training the generative process reward model (PRM)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from training.common import LORA_TARGETS, validate_training_fields


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class PRMTrainConfig:
    """How ``train_prm`` runs. Validated on construction."""

    learning_rate: float = field(
        default=2e-4, metadata=_help("AdamW learning rate (> 0); ~2e-5 when full_finetune.")
    )
    epochs: float = field(default=2.0, metadata=_help("Passes over the data (> 0); max_steps wins when set."))
    max_steps: int = field(
        default=-1, metadata=_help("Stop after this many optimizer steps (>= 1), or -1 for epochs.")
    )
    batch_size: int = field(default=4, metadata=_help("Examples per device per step (>= 1)."))
    gradient_accumulation_steps: int = field(default=1, metadata=_help("Batches per optimizer step (>= 1)."))
    max_length: int = field(default=512, metadata=_help("Tokens kept per rubric prompt and verdict (>= 16)."))
    eval_fraction: float = field(
        default=0.1, metadata=_help("Share of examples held out for an eval loss, in [0, 1); 0 turns it off.")
    )
    balance_classes: bool = field(
        default=True, metadata=_help("Oversample the rarer label until True and False are equally common.")
    )
    full_finetune: bool = field(
        default=False, metadata=_help("Train every weight instead of a LoRA adapter.")
    )
    lora_r: int = field(default=16, metadata=_help("LoRA rank (>= 1)."))
    lora_alpha: float = field(default=32.0, metadata=_help("LoRA scaling alpha (> 0), usually 2 * lora_r."))
    lora_dropout: float = field(default=0.05, metadata=_help("Dropout on the LoRA path, in [0, 1)."))
    lora_target_modules: tuple[str, ...] = field(
        default=LORA_TARGETS, metadata=_help("Linear layers that get LoRA adapters.")
    )
    seed: int = field(
        default=0, metadata=_help("Random seed of the split, balancing, shuffling and initialisation.")
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_target_modules", tuple(self.lora_target_modules))
        validate_training_fields(self)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lora_target_modules"] = list(self.lora_target_modules)
        return data
