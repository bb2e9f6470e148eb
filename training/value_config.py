"""Settings of training the value head on returns mined from trees."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from training.base_config import TrainConfig, need


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class ValueTrainConfig(TrainConfig):
    """How ``train_value`` runs: an MLP on the frozen policy's hidden states.
    Validated on construction."""

    learning_rate: float = field(default=1e-3, metadata=_help("Adam learning rate of the MLP (> 0)."))
    epochs: int = field(
        default=30, metadata=_help("Passes over the features (>= 1); max_steps wins when set.")
    )
    batch_size: int = field(default=64, metadata=_help("States per MLP optimizer step (>= 1)."))
    eval_fraction: float = field(
        default=0.2,
        metadata=_help("Share of states held out for a validation loss, in [0, 1); 0 turns it off."),
    )
    feature_batch_size: int = field(
        default=8, metadata=_help("States read per forward pass of the frozen language model (>= 1).")
    )
    inner_size: int = field(default=256, metadata=_help("Width of the MLP's hidden layer (>= 1)."))
    weight_decay: float = field(default=0.0, metadata=_help("Adam weight decay (>= 0)."))
    balance_classes: bool = field(
        default=True,
        metadata=_help(
            "Weight states so that those with return >= 0.5 and those below carry equal total weight "
            "(a head trained on mostly failing states otherwise learns to say 'fails' everywhere)."
        ),
    )
    weight_by_count: bool = field(
        default=False,
        metadata=_help(
            "Weight each state's squared error by its visit count (states seen more often count more)."
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.feature_batch_size >= 1, f"feature_batch_size must be >= 1, got {self.feature_batch_size}")
        need(self.inner_size >= 1, f"inner_size must be >= 1, got {self.inner_size}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
