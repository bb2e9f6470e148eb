"""What the app offers from the engine: the policy models to pick from, the
tasks, and the model the Home page's demo uses.

The app imports only the engine's torch-free modules (``engine.models``,
``engine.config``, ``engine.answers``, ``engine.tasks``);
``tests/test_app_pages.py::test_app_never_imports_torch`` holds it to that.
"""

from __future__ import annotations

from pathlib import Path

from engine.models import DEFAULT_MODEL, PRESETS, Preset
from engine.tasks import TASKS

__all__ = ["DEFAULT_MODEL", "DEMO_MODEL", "ROOT", "TASKS", "policy_models"]

ROOT = Path(__file__).resolve().parent.parent
"""The repository root (the folder holding ``app/``, ``engine/``, ``canopy/``)."""

DEMO_MODEL = "smollm2-135m"
"""The Home page's demo search model: the fastest preset, installed with Canopy."""


def policy_models() -> list[Preset]:
    """The policy presets, ``DEFAULT_MODEL`` first, then in ``PRESETS`` order."""
    policies = [preset for preset in PRESETS.values() if preset.role == "policy"]
    return sorted(policies, key=lambda preset: preset.name != DEFAULT_MODEL)
