"""Settings per task: what ``canopy search`` and ``canopy eval`` start from
before a --config file and the flags, so one command with no settings
reproduces Canopy's report on that task (``docs/results.md`` gives the
measurements behind each value).

``search`` holds ``SearchConfig`` fields and ``eval`` holds ``EvalSettings``
fields (the baselines'); a field not named keeps its dataclass default.
"""

from __future__ import annotations

from typing import Any

TASK_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "arithmetic": {"search": {}, "eval": {}},
    "gsm8k": {"search": {}, "eval": {}},
}


def search_defaults(task: str) -> dict[str, Any]:
    """``SearchConfig`` settings for ``task`` that differ from the dataclass defaults."""
    return dict(TASK_DEFAULTS.get(task, {}).get("search", {}))


def eval_defaults(task: str) -> dict[str, Any]:
    """``EvalSettings`` settings (baselines) for ``task`` that differ from the dataclass defaults."""
    return dict(TASK_DEFAULTS.get(task, {}).get("eval", {}))
