"""What one self-improvement iteration records in ``Iteration.metrics``.

The improve loop (``training/improve.py``) writes these through
``IterationMetrics.to_dict``; the app reads them back through
``IterationMetrics.from_dict``, so both agree on one shape. Plain data: no
engine, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Checkpoints:
    """The models an iteration ends with, which the next one starts from.

    Attributes:
        policy: the policy: a preset, HF directory or .gguf file.
        value: value-head checkpoint directory; None before one is trained.
        prm: trained PRM directory; None means the policy answers the PRM rubric.
        orm: trained ORM directory; None means the policy answers the ORM rubric.
    """

    policy: str
    value: str | None = None
    prm: str | None = None
    orm: str | None = None


@dataclass(frozen=True)
class TrainSearch:
    """How the search did on a round's training problems.

    Attributes:
        solved: share of the training problems whose chosen answer was correct, in [0, 1].
        tokens: generated tokens per problem (>= 0); None in the loop's first format.
    """

    solved: float | None = None
    tokens: float | None = None


@dataclass
class IterationMetrics:
    """One iteration's bookkeeping and measurements.

    Bookkeeping (what the loop needs to resume):
        config: the loop's settings (``ImproveConfig.to_dict()``), the same in every round.
        round: 0 for the base evaluation, then 1, 2, ...
        checkpoints: the models the round has so far; None only in rows the loop did not write.
        done: the stages finished, in order ("search", "mine", "sft", ...).
        runs: stage ("search", "eval_greedy", "eval_mcts") -> the id of its eval ``Run``.
        seconds: stage -> wall-clock seconds it took.
        skipped: trained stage -> why it kept the previous checkpoint.
        error: "ExceptionType: message" of the failure that stopped the round, if any.

    Measurements (what the app charts, see ``measurements``):
        accuracy: method ("greedy", "mcts") -> held-out accuracy, in [0, 1].
        tokens: method -> generated tokens per held-out problem (>= 0).
        data: "<kind>_examples" (sft, dpo, value, prm, orm), "tree_count" and "human_labels"
            (steps whose value/prm examples came from people's labels) -> counts.
        loss: kind -> final training loss; "<kind>_eval" -> held-out loss where one was kept.
        critics: critic ("value", "prm", "orm") -> {"precision", "recall", "ece"}, each
            in [0, 1] or None, over the held-out MCTS trees' nodes with a verified outcome.
        train_search: the search on the round's training problems.
        other: keys this class does not know, kept as stored so nothing is lost;
            their numbers are charted as they are.
    """

    config: dict[str, Any] = field(default_factory=dict)
    round: int = 0
    checkpoints: Checkpoints | None = None
    done: list[str] = field(default_factory=list)
    runs: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    accuracy: dict[str, float] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)
    data: dict[str, int] = field(default_factory=dict)
    loss: dict[str, float] = field(default_factory=dict)
    critics: dict[str, dict[str, float | None]] = field(default_factory=dict)
    train_search: TrainSearch | None = None
    other: dict[str, Any] = field(default_factory=dict)

    def measurements(self) -> dict[str, float]:
        """Every number worth charting, keyed by its path ("accuracy.greedy",
        "critics.value.ece", "train_search.tokens"); bookkeeping left out."""
        measured = {
            "accuracy": self.accuracy,
            "tokens": self.tokens,
            "data": self.data,
            "loss": self.loss,
            "critics": self.critics,
            "train_search": asdict(self.train_search) if self.train_search else {},
        }
        return _numbers(measured) | _numbers(self.other)

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in ``Iteration.metrics`` (unset optional fields left out)."""
        stored = {spec.name: getattr(self, spec.name) for spec in fields(self) if spec.name != "other"}
        stored["checkpoints"] = asdict(self.checkpoints) if self.checkpoints else None
        stored["train_search"] = asdict(self.train_search) if self.train_search else None
        return {**self.other, **{key: value for key, value in stored.items() if value is not None}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> IterationMetrics:
        """Read any stored ``Iteration.metrics``: what ``to_dict`` writes, the
        loop's first format (``train_accuracy``), and rows written by hand
        (unknown keys land in ``other``)."""
        values = dict(data or {})
        if "train_accuracy" in values and "train_search" not in values:
            values["train_search"] = {"solved": values.pop("train_accuracy").get("mcts")}
        known = {spec.name for spec in fields(cls)} - {"other"}
        checkpoints = values.pop("checkpoints", None)
        train_search = values.pop("train_search", None)
        return cls(
            **{key: value for key, value in values.items() if key in known},
            checkpoints=Checkpoints(**checkpoints) if checkpoints else None,
            train_search=TrainSearch(**train_search) if train_search else None,
            other={key: value for key, value in values.items() if key not in known},
        )


def _numbers(value: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested dicts, keyed "a.b" (booleans are not numbers here)."""
    if isinstance(value, Mapping):
        found: dict[str, float] = {}
        for key, item in value.items():
            found.update(_numbers(item, f"{prefix}{key}."))
        return found
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {prefix.rstrip("."): float(value)}
    return {}
