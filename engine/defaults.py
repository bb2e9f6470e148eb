"""Settings per task: what ``canopy eval`` starts from before a --config file
and the flags, so one command with no settings reproduces Canopy's report on
that task (``docs/results.md`` gives the measurements behind each value).
``canopy search`` and the app start from the dataclasses' own defaults.

``search`` holds ``SearchConfig`` fields and ``eval`` holds ``EvalSettings``
fields (the baselines'); a field not named keeps its dataclass default.
"""

from __future__ import annotations

from typing import Any

_VERIFIED_SEARCH: dict[str, Any] = {
    # Every step is a step, and every trajectory gets to state its answer: options
    # end at a line that does some work, rollouts at the stated answer or 512 tokens
    # (>= 95% of qwen2.5-coder-0.5b's samples finish within it on both tasks).
    "termination": ("step",),
    "max_option_tokens": 96,
    "rollout_max_tokens": 512,
    # The critics that discriminate: the program checker (trajectory AUC 0.87-0.90
    # on the development slices) and its programs' votes; the policy grading itself
    # (generative PRM/ORM) was at chance, so it is off.
    "tool": "program",
    "programs": 6,
    "program_votes": 1.0,
    "weight_prm": 0.0,
    "weight_orm": 0.0,
    # A small tree: 4 simulations, 3 root children, 2-3 below, one rollout each,
    # two simulations per decode batch, stopping once the vote cannot change.
    "simulations": 4,
    "rollouts": 1,
    "root_min_children": 3,
    "root_max_children": 3,
    "min_children": 2,
    "max_children": 3,
    "parallel_simulations": 2,
    "stop_when_settled": True,
}

TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "arithmetic": {"search": _VERIFIED_SEARCH, "eval": {"max_tokens": 512}},
    "gsm8k": {"search": _VERIFIED_SEARCH, "eval": {"max_tokens": 512}},
}


def search_defaults(task: str) -> dict[str, Any]:
    """``SearchConfig`` settings for ``task`` that differ from the dataclass defaults."""
    return dict(TASK_DEFAULTS.get(task, {}).get("search", {}))


def eval_defaults(task: str) -> dict[str, Any]:
    """``EvalSettings`` settings (baselines) for ``task`` that differ from the dataclass defaults."""
    return dict(TASK_DEFAULTS.get(task, {}).get("eval", {}))
