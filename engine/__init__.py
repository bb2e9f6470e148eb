"""Canopy's search engine. The public surface, loaded on first use so that
``import engine.config`` (the app does) stays free of models and torch."""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "SearchConfig": "engine.config",
    "CriticModels": "engine.config",
    "Problem": "engine.types",
    "Tree": "engine.tree",
    "run_search": "engine.search",
    "build_components": "engine.api",
    "search_problem": "engine.api",
    "resume_search": "engine.api",
    "SearchResult": "engine.api",
    "load_policy": "engine.policies",
    "evaluate": "engine.evaluate",
    "WorkerPool": "engine.fanout",
    "evaluate_on_workers": "engine.fanout",
    "compare": "engine.compare",
    "run_ablation": "engine.compare",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
