"""Settings of DPO of the policy on sibling preference pairs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.base_config import FineTuneConfig, need


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class DPOTrainConfig(FineTuneConfig):
    """How ``train_dpo`` runs. Validated on construction."""

    learning_rate: float = field(
        default=5e-5, metadata=_help("AdamW learning rate (> 0); ~5e-7 when full_finetune.")
    )
    epochs: float = field(
        default=1.0, metadata=_help("Passes over the pairs (> 0); max_steps wins when set.")
    )
    max_length: int = field(
        default=512, metadata=_help("Tokens kept per prompt plus option (>= 16); longer prompts are dropped.")
    )
    full_finetune: bool = field(
        default=False,
        metadata=_help(
            "Train every weight (loads a second copy of the model as the reference) instead of LoRA."
        ),
    )
    beta: float = field(
        default=0.1, metadata=_help("DPO beta (> 0): higher keeps the policy nearer the reference.")
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.beta > 0, f"beta must be > 0, got {self.beta}; 0.1 is the usual value")
