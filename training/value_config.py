"""Settings of training the value head on returns mined from trees."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from training.common import need


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class ValueTrainConfig:
    """How ``train_value`` runs. Validated on construction."""

    learning_rate: float = field(default=1e-3, metadata=_help("Adam learning rate of the MLP (> 0)."))
    epochs: int = field(
        default=30, metadata=_help("Passes over the features (>= 1); max_steps wins when set.")
    )
    max_steps: int = field(
        default=-1, metadata=_help("Stop after this many optimizer steps (>= 1), or -1 for epochs.")
    )
    batch_size: int = field(default=64, metadata=_help("States per MLP optimizer step (>= 1)."))
    feature_batch_size: int = field(
        default=8, metadata=_help("States read per forward pass of the frozen language model (>= 1).")
    )
    inner_size: int = field(default=256, metadata=_help("Width of the MLP's hidden layer (>= 1)."))
    weight_decay: float = field(default=0.0, metadata=_help("Adam weight decay (>= 0)."))
    weight_by_count: bool = field(
        default=False,
        metadata=_help(
            "Weight each state's squared error by its visit count (states seen more often count more)."
        ),
    )
    eval_fraction: float = field(
        default=0.2,
        metadata=_help("Share of states held out for a validation loss, in [0, 1); 0 turns it off."),
    )
    seed: int = field(default=0, metadata=_help("Random seed of the split, shuffling and initialisation."))

    def __post_init__(self) -> None:
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}; try 1e-3")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(
            self.max_steps == -1 or self.max_steps >= 1,
            f"max_steps must be >= 1, or -1 to run whole epochs; got {self.max_steps}",
        )
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.feature_batch_size >= 1, f"feature_batch_size must be >= 1, got {self.feature_batch_size}")
        need(self.inner_size >= 1, f"inner_size must be >= 1, got {self.inner_size}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(0 <= self.eval_fraction < 1, f"eval_fraction must be in [0, 1), got {self.eval_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
