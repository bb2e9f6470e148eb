"""Settings of supervised fine-tuning of the policy on mined trajectories."""

from __future__ import annotations

from dataclasses import dataclass

from training.base_config import FineTuneConfig


@dataclass(frozen=True)
class SFTTrainConfig(FineTuneConfig):
    """How ``train_sft`` runs: ``FineTuneConfig``'s fields and defaults as they
    are. Validated on construction."""
