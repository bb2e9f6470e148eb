"""Per-run search settings. Every field carries help text, so the CLI and the app
build their controls from this one place; ``SearchConfig`` validates itself."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

SELECTIONS = ("puct", "uct")
SIMILARITY_MEASURES = ("cosine", "edit", "off")
TERMINATIONS = ("step", "newline", "blank_line", "formula")
ANSWER_SELECTIONS = ("vote", "visits", "q", "orm")
TOOLS = ("arithmetic", "program")


def _help(text: str, **extra: Any) -> dict[str, Any]:
    return {"help": text, **extra}


@dataclass(frozen=True)
class SearchConfig:
    """How one search runs. Ranges are checked by ``validate()`` (called on construction)."""

    simulations: int = field(default=16, metadata=_help("Number of MCTS simulations (>= 1)."))
    seed: int = field(default=0, metadata=_help("Random seed; the same seed gives the same tree."))
    selection: str = field(default="puct", metadata=_help("Child selection rule: puct (uses priors) or uct."))
    c: float = field(default=1.0, metadata=_help("Exploration constant of PUCT/UCT (>= 0)."))
    root_min_children: int = field(default=3, metadata=_help("c_min at the root (>= 1)."))
    root_max_children: int = field(default=5, metadata=_help("c_max at the root (>= root_min_children)."))
    min_children: int = field(default=2, metadata=_help("c_min below the root (>= 1)."))
    max_children: int = field(default=4, metadata=_help("c_max below the root (>= min_children)."))
    branching_alpha: float = field(
        default=8.0,
        metadata=_help("alpha in n(s) = max(c_min, min(floor(alpha * I(s)) + 1, c_max)); >= 0."),
    )
    similarity: str = field(
        default="cosine", metadata=_help("Sibling similarity measure: cosine (MiniLM), edit, or off.")
    )
    similarity_threshold: float = field(
        default=0.95, metadata=_help("Options more similar than this to a sibling are filtered; in (0, 1].")
    )
    termination: tuple[str, ...] = field(
        default=("newline",),
        metadata=_help(
            "Option ends at: step (end of a line that holds a number), newline, blank_line, formula "
            "(any that fire); a token cap always applies."
        ),
    )
    max_option_tokens: int = field(default=48, metadata=_help("Token cap of one option (>= 1)."))
    max_depth: int = field(default=10, metadata=_help("Options on a path before it is cut off (>= 1)."))
    temperature: float = field(default=0.8, metadata=_help("Sampling temperature of options, in (0, 2]."))
    rollouts: int = field(
        default=1, metadata=_help("Fast rollouts per new node (>= 0; 0 turns rollouts off).")
    )
    rollout_max_tokens: int = field(default=192, metadata=_help("Token cap of one rollout (>= 1)."))
    rollout_temperature: float = field(
        default=0.7, metadata=_help("Sampling temperature of rollouts, in (0, 2].")
    )
    weight_value: float = field(default=1.0, metadata=_help("Weight of the value head, in [0, 1]."))
    weight_prm: float = field(default=1.0, metadata=_help("Weight of the process reward model, in [0, 1]."))
    weight_orm: float = field(default=1.0, metadata=_help("Weight of the outcome reward model, in [0, 1]."))
    weight_tool: float = field(default=1.0, metadata=_help("Weight of the checker (see tool), in [0, 1]."))
    tool: str = field(
        default="arithmetic",
        metadata=_help(
            "The checker behind the tool score: arithmetic (re-computes each a op b = c claim) or "
            "program (agreement with programs the policy writes for the problem, run in a sandbox)."
        ),
    )
    programs: int = field(
        default=4, metadata=_help("Programs the program checker writes per problem (>= 1).")
    )
    program_temperature: float = field(
        default=0.7, metadata=_help("Sampling temperature of those programs, in (0, 2].")
    )
    program_max_tokens: int = field(default=400, metadata=_help("Token cap of one program (>= 1)."))
    answer_selection: str = field(
        default="vote", metadata=_help("Final answer by: vote (weighted majority), visits, q, or orm.")
    )
    program_votes: float = field(
        default=1.0,
        metadata=_help(
            "With tool = program: each program's result counts as this many votes in the answer vote "
            "(>= 0; 0 leaves the programs out)."
        ),
    )
    stop_when_settled: bool = field(
        default=False,
        metadata=_help(
            "Stop simulating once the leading answer's vote can no longer be overtaken by what the "
            "remaining simulations could add."
        ),
    )
    parallel_simulations: int = field(
        default=1,
        metadata=_help(
            "Simulations per step, in [1, simulations]: their leaves are chosen under a virtual loss "
            "and expanded and evaluated in one batch (1 runs them one at a time)."
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.termination, str | list):
            terms = (self.termination,) if isinstance(self.termination, str) else self.termination
            object.__setattr__(self, "termination", tuple(terms))
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.simulations >= 1, f"simulations must be >= 1, got {self.simulations}")
        need(
            1 <= self.parallel_simulations <= self.simulations,
            f"parallel_simulations must be in [1, simulations = {self.simulations}], "
            f"got {self.parallel_simulations}",
        )
        need(self.selection in SELECTIONS, f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        need(self.c >= 0, f"c must be >= 0, got {self.c}")
        need(self.root_min_children >= 1, f"root_min_children must be >= 1, got {self.root_min_children}")
        need(
            self.root_max_children >= self.root_min_children,
            f"root_max_children ({self.root_max_children}) must be >= "
            f"root_min_children ({self.root_min_children})",
        )
        need(self.min_children >= 1, f"min_children must be >= 1, got {self.min_children}")
        need(
            self.max_children >= self.min_children,
            f"max_children ({self.max_children}) must be >= min_children ({self.min_children})",
        )
        need(self.branching_alpha >= 0, f"branching_alpha must be >= 0, got {self.branching_alpha}")
        need(
            self.similarity in SIMILARITY_MEASURES,
            f"similarity must be one of {SIMILARITY_MEASURES}, got {self.similarity!r}",
        )
        need(
            0 < self.similarity_threshold <= 1,
            f"similarity_threshold must be in (0, 1], got {self.similarity_threshold}",
        )
        need(len(self.termination) > 0, "termination needs at least one of " + ", ".join(TERMINATIONS))
        for name in self.termination:
            need(name in TERMINATIONS, f"termination must be among {TERMINATIONS}, got {name!r}")
        need(self.max_option_tokens >= 1, f"max_option_tokens must be >= 1, got {self.max_option_tokens}")
        need(self.max_depth >= 1, f"max_depth must be >= 1, got {self.max_depth}")
        need(0 < self.temperature <= 2, f"temperature must be in (0, 2], got {self.temperature}")
        need(self.rollouts >= 0, f"rollouts must be >= 0, got {self.rollouts}")
        need(self.rollout_max_tokens >= 1, f"rollout_max_tokens must be >= 1, got {self.rollout_max_tokens}")
        need(
            0 < self.rollout_temperature <= 2,
            f"rollout_temperature must be in (0, 2], got {self.rollout_temperature}",
        )
        for name in ("weight_value", "weight_prm", "weight_orm", "weight_tool"):
            weight = getattr(self, name)
            need(0 <= weight <= 1, f"{name} must be in [0, 1], got {weight}")
        need(self.tool in TOOLS, f"tool must be one of {TOOLS}, got {self.tool!r}")
        need(self.programs >= 1, f"programs must be >= 1, got {self.programs}")
        need(
            0 < self.program_temperature <= 2,
            f"program_temperature must be in (0, 2], got {self.program_temperature}",
        )
        need(self.program_votes >= 0, f"program_votes must be >= 0, got {self.program_votes}")
        need(self.program_max_tokens >= 1, f"program_max_tokens must be >= 1, got {self.program_max_tokens}")
        need(
            self.answer_selection in ANSWER_SELECTIONS,
            f"answer_selection must be one of {ANSWER_SELECTIONS}, got {self.answer_selection!r}",
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["termination"] = list(self.termination)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        """The config ``data`` describes. The critics' checkpoint keys of runs
        stored before ``CriticModels`` existed are skipped (``engine.api.stored_critic_models``
        reads them)."""
        data = {key: value for key, value in data.items() if key not in CriticModels.LEGACY_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown search setting(s): {', '.join(unknown)}")
        return cls(**data)

    def with_overrides(self, **overrides: Any) -> SearchConfig:
        return SearchConfig.from_dict({**self.to_dict(), **overrides})


@dataclass(frozen=True)
class CriticModels:
    """Which trained models the critics run on: engine setup, kept apart from
    the per-run ``SearchConfig`` (as vLLM keeps engine arguments apart from
    ``SamplingParams``). Each is a local path or None.

    Attributes:
        value: value-head checkpoint directory (``value_head.json`` + weights);
            None turns the value head off (its weight counts as 0).
        prm: trained PRM model directory; None asks the policy the PRM rubric.
        orm: trained ORM model directory; None asks the policy the ORM rubric.
    """

    value: str | None = field(
        default=None, metadata=_help("Value-head checkpoint directory; without one its weight is 0.")
    )
    prm: str | None = field(
        default=None,
        metadata=_help("Trained PRM model directory (canopy improve writes one); default: ask the policy."),
    )
    orm: str | None = field(
        default=None,
        metadata=_help("Trained ORM model directory (canopy improve writes one); default: ask the policy."),
    )

    LEGACY_KEYS = ("value_checkpoint", "prm_checkpoint", "orm_checkpoint")
    """Keys under which runs stored before this class existed kept the paths in their search config."""

    def __post_init__(self) -> None:
        for name in ("value", "prm", "orm"):
            path = getattr(self, name)
            if path is not None and (not isinstance(path, str) or not path.strip()):
                raise ConfigError(f"the {name} checkpoint must be a non-empty path or None, got {path!r}")

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CriticModels:
        data = dict(data or {})
        unknown = sorted(set(data) - {"value", "prm", "orm"})
        if unknown:
            raise ConfigError(f"unknown critic model(s): {', '.join(unknown)}; use value, prm, orm")
        return cls(**data)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML or JSON file (a flat table of ``SearchConfig`` fields)."""
    data = read_settings_file(path)
    SearchConfig.from_dict(data)
    return data


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """The table in a TOML or JSON file, top-level keys with "-" read as "_"; not validated."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"config {path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must hold a table of settings")
    return {key.replace("-", "_"): value for key, value in data.items()}
