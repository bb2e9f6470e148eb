"""What the ``canopy`` subcommands share: settings flags built from the
settings dataclasses, reading those settings back, loading the models a
command needs, logging, and the interrupt that names its resume command.

Heavy modules (torch, the backends, the store) are imported inside the
functions that need them, so ``canopy --help`` starts fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from canopy.errors import UsageError
from engine.config import (
    ANSWER_SELECTIONS,
    SELECTIONS,
    SIMILARITY_MEASURES,
    TERMINATIONS,
    TOOLS,
    CriticModels,
    SearchConfig,
    load_config_file,
)
from engine.models import DEFAULT_MODEL
from engine.policies import BACKENDS
from engine.tasks import TASKS

if TYPE_CHECKING:
    from engine.api import Components

SEARCH_CHOICES = {
    "selection": SELECTIONS,
    "similarity": SIMILARITY_MEASURES,
    "termination": TERMINATIONS,
    "answer_selection": ANSWER_SELECTIONS,
    "tool": TOOLS,
}

CHECKPOINT_FLAG = "{}_checkpoint"
"""``CriticModels.value`` is ``--value-checkpoint`` on the command line and
``value_checkpoint`` in a --config file (the names runs have always used)."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM stopped a command; ``hint`` says how to continue it
    (None when nothing resumable was written yet)."""

    def __init__(self, hint: str | None) -> None:
        super().__init__(hint)
        self.hint = hint


def log(message: str) -> None:
    """One line of progress or news on stderr, marked as Canopy's."""
    print(f"canopy: {message}", file=sys.stderr, flush=True)


def add_settings_flags(
    group,
    settings_class: type,
    choices: dict[str, tuple[str, ...]] | None = None,
    *,
    section: str = "",
    skip: tuple[str, ...] = (),
) -> None:
    """One flag per field of a settings dataclass (but those in ``skip``), typed
    by its default and helped by its ``metadata["help"]``; unset flags stay out
    of the namespace. With ``section``, flags read ``--<section>-<field>`` and
    land in ``<section>.<field>``."""
    for field in fields(settings_class):
        if field.name in skip:
            continue
        flag = "--" + (f"{section}-" if section else "") + field.name.replace("_", "-")
        default = field.default if field.default is not MISSING else field.default_factory()
        kwargs: dict[str, Any] = {
            "dest": f"{section}.{field.name}" if section else field.name,
            "default": argparse.SUPPRESS,
            "help": f"{field.metadata.get('help', '')} (default: {default})",
        }
        if section:
            kwargs["metavar"] = field.name.upper()
        if choices and field.name in choices:
            kwargs["choices"] = choices[field.name]
        if isinstance(default, tuple | list):
            kwargs["nargs"] = "+"
        elif isinstance(default, bool):
            kwargs["type"] = lambda text: text.lower() in ("1", "true", "yes")
        elif isinstance(default, int | float):
            kwargs["type"] = type(default)
        group.add_argument(flag, **kwargs)


def add_search_settings(parser: argparse.ArgumentParser, *, critic_models: bool = True) -> None:
    """The search's flags: one per ``SearchConfig`` field and, with
    ``critic_models``, ``--value-checkpoint``/``--prm-checkpoint``/``--orm-checkpoint``."""
    group = parser.add_argument_group("search settings (override --config)")
    add_settings_flags(group, SearchConfig, SEARCH_CHOICES)
    if not critic_models:
        return
    critics = parser.add_argument_group("trained critics (override --config)")
    for field in fields(CriticModels):
        name = CHECKPOINT_FLAG.format(field.name)
        critics.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar="DIR",
            default=argparse.SUPPRESS,
            help=field.metadata["help"],
        )


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--rollout-model``, ``--backend``, ``--base-url``."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"Preset, local HF dir, .gguf file or hub id (default: {DEFAULT_MODEL}).",
    )
    parser.add_argument("--rollout-model", help="Smaller/faster model for rollouts (default: --model).")
    parser.add_argument("--backend", default="hf", choices=BACKENDS, help="Inference backend (default: hf).")
    parser.add_argument("--base-url", help="Completions server of the openai backend.")


def add_task_flags(parser: argparse.ArgumentParser) -> None:
    """Where problems come from: ``--task``, ``--data``, ``--split`` and the arithmetic difficulty."""
    parser.add_argument("--task", default="arithmetic", choices=TASKS)
    parser.add_argument("--data", help="GSM8K-format JSONL file (task gsm8k).")
    parser.add_argument("--split", default="test", choices=("train", "test"), help="Arithmetic split.")
    parser.add_argument("--steps", type=int, default=2, help="Arithmetic difficulty: operations per problem.")
    parser.add_argument("--max-number", type=int, default=20, help="Arithmetic difficulty: largest operand.")


def add_db_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", help="Database URL or SQLite path (default: $CANOPY_DB or ~/.local/share/canopy)."
    )


def add_worker_flags(parser: argparse.ArgumentParser, *, what: str) -> None:
    """``--workers`` and ``--ray-address``: ``what`` (the problems of ...) on Ray actors."""
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help=f"Solve {what} on N Ray actors, each loading the model once (>= 1; 1 runs in this "
        "process without Ray; more needs the [cluster] extra).",
    )
    parser.add_argument(
        "--ray-address",
        metavar="auto|HOST:PORT",
        help="Join this Ray cluster for the workers instead of starting Ray on this machine.",
    )


def fans_out(args: argparse.Namespace) -> bool:
    """Whether ``--workers``/``--ray-address`` ask for Ray actors (``--workers`` < 1 is a ``UsageError``)."""
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    return args.workers > 1 or args.ray_address is not None


def search_settings(
    args: argparse.Namespace,
    *,
    base: dict[str, Any] | None = None,
    base_models: CriticModels | None = None,
) -> tuple[SearchConfig, CriticModels]:
    """The search config and critic models that ``base``/``base_models`` (a
    stored run's), then ``--config``, then the flags describe (later ones win)."""
    settings = dict(base or {})
    models = (base_models or CriticModels()).to_dict()
    if getattr(args, "config", None):
        settings.update(load_config_file(args.config))
    flags = vars(args)
    settings.update({field.name: flags[field.name] for field in fields(SearchConfig) if field.name in flags})
    for name in models:
        value = flags.get(CHECKPOINT_FLAG.format(name), settings.get(CHECKPOINT_FLAG.format(name)))
        if value:
            models[name] = str(Path(value).expanduser())
    return SearchConfig.from_dict(settings), CriticModels(**models)


def load_components(
    config: SearchConfig,
    critic_models: CriticModels,
    *,
    model: str,
    rollout_model: str | None,
    backend: str,
    base_url: str | None,
) -> Components:
    """Load the policy (and a separate rollout policy) on ``backend`` and
    build the critics and similarity filter that ``config`` turns on."""
    from engine.api import build_components
    from engine.policies import load_policy

    log(f"loading {model} ...")
    policy = load_policy(model, backend=backend, base_url=base_url)
    rollout_policy = None
    if rollout_model and rollout_model != model:
        rollout_policy = load_policy(rollout_model, backend=backend, base_url=base_url)
    return build_components(
        config,
        model=model,
        critic_models=critic_models,
        rollout_model=rollout_model,
        policy=policy,
        rollout_policy=rollout_policy,
    )


def check_models(*names: str | None) -> None:
    """Resolve each model name now, so a typo fails before anything is written."""
    from engine.models import resolve_model

    for name in filter(None, names):
        resolve_model(name)


def resume_hint(command: str, run_id: int | None, args: argparse.Namespace) -> str | None:
    """ "resume with `canopy COMMAND --resume ID [--db URL]`", or None without a run."""
    if run_id is None:
        return None
    database = f" --db {args.db}" if getattr(args, "db", None) else ""
    return f"resume with `canopy {command} --resume {run_id}{database}`"
