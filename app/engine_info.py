"""What the app may know about the engine without importing torch: the search
settings, the model presets, answer matching, and whether the CLI is installed.

Every engine import goes through ``import_torch_free``, which refuses torch,
transformers and vLLM while the module loads; a module that needs them is treated
as absent and the app falls back to what it knows itself.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import re
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding ``app/``, ``engine/``, ``canopy/``)."""

HEAVY_MODULES = ("torch", "transformers", "vllm", "sentence_transformers")


class _RefuseHeavy(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):  # noqa: ANN001 (importlib protocol)
        if fullname.split(".")[0] in HEAVY_MODULES:
            raise ImportError(f"the app does not import {fullname}")
        return None


def import_torch_free(name: str) -> ModuleType | None:
    """``importlib.import_module(name)``, or None if it is missing, broken, or would
    import torch and friends (already-imported modules are returned as they are).

    If the module's package fails to import (say ``engine/__init__.py`` starts
    importing the search), the module's own file is loaded on its own.
    """
    if name in sys.modules:
        return sys.modules[name]
    blocker = _RefuseHeavy()
    sys.meta_path.insert(0, blocker)
    try:
        try:
            return importlib.import_module(name)
        except Exception:  # a half-written engine module must not take the app down
            return _load_file(name)
    finally:
        sys.meta_path.remove(blocker)


def _load_file(name: str) -> ModuleType | None:
    path = ROOT / (name.replace(".", "/") + ".py")
    alias = "canopy_app_" + name.replace(".", "_")
    if alias in sys.modules:
        return sys.modules[alias]
    spec = importlib.util.spec_from_file_location(alias, path)
    if not path.exists() or spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[alias]
        return None
    return module


@dataclass(frozen=True)
class ModelChoice:
    name: str
    description: str


FALLBACK_MODELS = (
    ModelChoice(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder 0.5B Instruct: solves some grade-school math (default)."
    ),
    ModelChoice("smollm2-135m", "SmolLM2 135M Instruct: fast, weak at math; good for a first look."),
)
DEFAULT_MODEL = "qwen2.5-coder-0.5b"
DEMO_MODEL = "smollm2-135m"
TASKS = ("arithmetic", "gsm8k")


def policy_models() -> list[ModelChoice]:
    """Policy presets from ``engine.models.PRESETS`` when importable, else the known two."""
    models = import_torch_free("engine.models")
    presets = getattr(models, "PRESETS", None)
    if not isinstance(presets, dict) or not presets:
        return list(FALLBACK_MODELS)
    choices = [
        ModelChoice(name, str(getattr(preset, "description", "")))
        for name, preset in presets.items()
        if getattr(preset, "role", "policy") == "policy"
    ]
    choices.sort(key=lambda choice: choice.name != DEFAULT_MODEL)
    return choices or list(FALLBACK_MODELS)


def search_config_module() -> ModuleType | None:
    return import_torch_free("engine.config")


def search_unavailable_reason() -> str | None:
    """Why a search cannot be started from the app, or None when it can."""
    missing = [
        path
        for path in ("canopy/cli.py", "canopy/__main__.py", "engine/search.py")
        if not (ROOT / path).exists()
    ]
    if missing:
        return (
            "The search engine is not installed in this checkout yet ("
            + ", ".join(missing)
            + " missing), so searches cannot be started from the app. Existing runs can still be explored."
        )
    return None


def improve_unavailable_reason() -> str | None:
    if not (ROOT / "training" / "improve.py").exists():
        return (
            "`canopy improve` is not available yet: the self-improvement loop (training/improve.py) "
            "has not been written. The history below shows iterations recorded in the store."
        )
    return search_unavailable_reason()


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _number(text: str) -> Fraction | None:
    cleaned = text.replace(",", "").replace("$", "").strip().rstrip(".")
    match = _NUMBER.fullmatch(cleaned)
    return Fraction(match.group()) if match else None


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """The engine's strict checker when available, else numeric (or exact) equality."""
    if predicted is None or gold is None:
        return False
    answers = import_torch_free("engine.answers")
    check = getattr(answers, "answers_match", None)
    if callable(check):
        return bool(check(predicted, gold))
    a, b = _number(str(predicted)), _number(str(gold))
    return a == b if a is not None and b is not None else str(predicted).strip() == str(gold).strip()
