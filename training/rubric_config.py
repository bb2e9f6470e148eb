"""Settings of training the generative critics, the PRM and the ORM: both teach
the policy to answer a rubric with "True" or "False", so they share one class."""

from __future__ import annotations

from dataclasses import dataclass, field

from training.base_config import FineTuneConfig


@dataclass(frozen=True)
class RubricTrainConfig(FineTuneConfig):
    """How ``train_prm`` and ``train_orm`` run. Validated on construction."""

    balance_classes: bool = field(
        default=True,
        metadata={"help": "Oversample the rarer label (seeded) until True and False are equally common."},
    )
