"""What the miner turns into training data, and the thresholds that decide each label."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.config import ConfigError
from store.example_kinds import EXAMPLE_KINDS

KINDS = tuple(EXAMPLE_KINDS)


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class MineConfig:
    """What to mine from the trees, and the thresholds that decide each label."""

    sft_orm_threshold: float = field(
        default=0.5,
        metadata=_help("A critic-picked SFT trajectory needs an ORM score >= this; in [0, 1]."),
    )
    use_gold: bool = field(
        default=False,
        metadata=_help(
            "Allow gold answers: SFT keeps verified-correct trajectories; value/prm/orm labels "
            "use verified outcomes."
        ),
    )
    dpo_margin: float = field(
        default=0.2, metadata=_help("Sibling options whose Q differs by >= this form a DPO pair; in (0, 1].")
    )
    dpo_min_visits: int = field(
        default=1, metadata=_help("Both siblings of a DPO pair need at least this many visits (>= 1).")
    )
    prm_threshold: float = field(
        default=0.5,
        metadata=_help("A step is labelled good when its Monte Carlo estimate >= this; in [0, 1]."),
    )
    use_labels: bool = field(
        default=True,
        metadata=_help(
            "People's step labels from the studio replace mined value/prm labels of the same node, "
            "and labelled nodes of other trees join as examples."
        ),
    )
    max_sft_per_problem: int = field(
        default=1, metadata=_help("Most SFT trajectories kept per problem (>= 1).")
    )
    kinds: tuple[str, ...] = field(
        default=KINDS, metadata=_help(f"Which kinds of examples to mine, among {', '.join(KINDS)}.")
    )

    def __post_init__(self) -> None:
        if isinstance(self.kinds, str | list):
            kinds = (self.kinds,) if isinstance(self.kinds, str) else self.kinds
            object.__setattr__(self, "kinds", tuple(kinds))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(
            0 <= self.sft_orm_threshold <= 1,
            f"sft_orm_threshold must be in [0, 1], got {self.sft_orm_threshold}",
        )
        need(isinstance(self.use_gold, bool), f"use_gold must be true or false, got {self.use_gold!r}")
        need(isinstance(self.use_labels, bool), f"use_labels must be true or false, got {self.use_labels!r}")
        need(0 < self.dpo_margin <= 1, f"dpo_margin must be in (0, 1], got {self.dpo_margin}")
        need(self.dpo_min_visits >= 1, f"dpo_min_visits must be >= 1, got {self.dpo_min_visits}")
        need(0 <= self.prm_threshold <= 1, f"prm_threshold must be in [0, 1], got {self.prm_threshold}")
        need(
            self.max_sft_per_problem >= 1,
            f"max_sft_per_problem must be >= 1, got {self.max_sft_per_problem}",
        )
        need(len(self.kinds) > 0, f"kinds needs at least one of {', '.join(KINDS)}")
        for kind in self.kinds:
            need(kind in KINDS, f"kinds must be among {KINDS}, got {kind!r}")
        need(len(set(self.kinds)) == len(self.kinds), f"kinds lists a kind twice: {self.kinds}")
