"""The critics a search consults, and how their scores combine."""

from __future__ import annotations

from dataclasses import dataclass

from engine.config import SearchConfig
from engine.types import OutcomeCritic, StepCritic, ValueCritic


@dataclass(frozen=True)
class Critics:
    """The critics of one search; a None critic is off and its weight is 0.

    ``prm`` scores the newest step; ``orm`` and ``tool`` score finished
    trajectories (rollouts, or the node itself when terminal); ``value`` scores
    states.
    """

    value: ValueCritic | None = None
    prm: StepCritic | None = None
    orm: OutcomeCritic | None = None
    tool: OutcomeCritic | None = None

    def weights(self, config: SearchConfig) -> dict[str, float]:
        """The weights in force: the config's, zeroed where a critic is off."""
        return {
            "value": config.weight_value if self.value is not None else 0.0,
            "prm": config.weight_prm if self.prm is not None else 0.0,
            "orm": config.weight_orm if self.orm is not None else 0.0,
            "tool": config.weight_tool if self.tool is not None else 0.0,
        }


def combine(scores: dict[str, float | None], weights: dict[str, float]) -> float:
    """Weighted mean over the critics that gave a score, in [0, 1].

    Critics without a score (None) or weight drop out and the rest renormalise;
    with none left the value is 0.5, an uninformed guess.
    """
    present = [
        (weights[name], value) for name, value in scores.items() if value is not None and weights[name] > 0
    ]
    total = sum(weight for weight, _ in present)
    if total == 0:
        return 0.5
    return sum(weight * value for weight, value in present) / total
