"""The Search page's settings form, built from ``SearchConfig``'s fields and their
help text so a new setting shows up without touching the app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from types import ModuleType
from typing import Any

import streamlit as st

SECTIONS: dict[str, tuple[str, list[str]]] = {
    "search": (
        "Search",
        [
            "simulations",
            "parallel_simulations",
            "seed",
            "selection",
            "c",
            "answer_selection",
            "stop_when_settled",
        ],
    ),
    "branching": (
        "Branching: how many children a node gets",
        [
            "root_min_children",
            "root_max_children",
            "min_children",
            "max_children",
            "branching_alpha",
            "max_depth",
        ],
    ),
    "options": ("Options: one reasoning step each", ["termination", "max_option_tokens", "temperature"]),
    "similarity": ("Similarity filter: drop near-duplicate siblings", ["similarity", "similarity_threshold"]),
    "critics": (
        "Critic weights",
        [
            "weight_value",
            "weight_prm",
            "weight_orm",
            "weight_tool",
            "tool",
            "programs",
            "program_temperature",
            "program_max_tokens",
            "program_votes",
        ],
    ),
    "rollouts": (
        "Rollout policy: fast completions scored by the ORM",
        ["rollouts", "rollout_max_tokens", "rollout_temperature"],
    ),
}
LABELS = {
    "c": "Exploration constant c",
    "prm": "PRM",
    "orm": "ORM",
    "weight_value": "Value function weight",
    "weight_prm": "PRM weight (is this step correct?)",
    "weight_orm": "ORM weight (is the finished answer correct?)",
    "weight_tool": "Arithmetic checker weight",
    "branching_alpha": "Branching alpha",
}
UNIT_INTERVAL = {"similarity_threshold", "weight_value", "weight_prm", "weight_orm", "weight_tool"}


def choices(config_module: ModuleType) -> dict[str, tuple[str, ...]]:
    return {
        "selection": getattr(config_module, "SELECTIONS", ()),
        "similarity": getattr(config_module, "SIMILARITY_MEASURES", ()),
        "termination": getattr(config_module, "TERMINATIONS", ()),
        "answer_selection": getattr(config_module, "ANSWER_SELECTIONS", ()),
        "tool": getattr(config_module, "TOOLS", ()),
    }


def label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " ").capitalize())


def _default(spec: Any) -> Any:
    if spec.default is not MISSING:
        return spec.default
    return spec.default_factory() if spec.default_factory is not MISSING else None


def setting_widget(spec: Any, options: dict[str, tuple[str, ...]], prefix: str) -> Any:
    """One widget for one ``SearchConfig`` field, chosen by its default's type."""
    name, default, key = spec.name, _default(spec), f"{prefix}.{spec.name}"
    help_text = spec.metadata.get("help")
    if isinstance(default, bool):
        return st.checkbox(label(name), value=default, help=help_text, key=key)
    if isinstance(default, tuple | list):
        return tuple(
            st.multiselect(
                label(name), options.get(name) or default, default=list(default), help=help_text, key=key
            )
        )
    if name in options and options[name]:
        values = list(options[name])
        return st.selectbox(
            label(name),
            values,
            index=values.index(default) if default in values else 0,
            help=help_text,
            key=key,
        )
    if isinstance(default, int):
        return int(st.number_input(label(name), value=default, step=1, help=help_text, key=key))
    if isinstance(default, float):
        if name in UNIT_INTERVAL:
            return st.slider(label(name), 0.0, 1.0, value=default, step=0.01, help=help_text, key=key)
        return float(
            st.number_input(label(name), value=default, step=0.1, format="%.2f", help=help_text, key=key)
        )
    text = st.text_input(label(name), value=default or "", help=help_text, key=key)
    return text.strip() or None


CHECKPOINT_LABELS = {
    "value": "Value-head checkpoint",
    "prm": "Trained PRM folder",
    "orm": "Trained ORM folder",
}


def critic_models_form(config_module: ModuleType, prefix: str = "search.critic_models") -> dict[str, Any]:
    """A path field per ``CriticModels`` field (the trained critics' folders);
    returns ``{name: path or None}``."""
    values = {}
    for spec in fields(config_module.CriticModels):
        key = f"{prefix}.{spec.name}"
        text = st.text_input(
            CHECKPOINT_LABELS.get(spec.name, label(spec.name)), help=spec.metadata.get("help"), key=key
        )
        values[spec.name] = text.strip() or None
    return values


def settings_form(
    config_module: ModuleType, prefix: str = "search.cfg", extras: dict[str, Callable[[], None]] | None = None
) -> dict[str, Any]:
    """Widgets for every ``SearchConfig`` field, grouped; returns {field: value}.
    ``extras[section]`` draws more widgets at the top of that section."""
    config_fields = {spec.name: spec for spec in fields(config_module.SearchConfig)}
    options = choices(config_module)
    placed = {name for _, names in SECTIONS.values() for name in names}
    sections = [
        (key, title, [n for n in names if n in config_fields]) for key, (title, names) in SECTIONS.items()
    ]
    sections.append(("more", "More settings", [n for n in config_fields if n not in placed]))
    values: dict[str, Any] = {}
    for index, (key, title, names) in enumerate(sections):
        if not names:
            continue
        with st.expander(title, expanded=index == 0):
            if extras and key in extras:
                extras[key]()
            columns = st.columns(3)
            for position, name in enumerate(names):
                with columns[position % 3]:
                    values[name] = setting_widget(config_fields[name], options, prefix)
    return values
