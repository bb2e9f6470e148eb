"""The self-improvement loop: search, mine, train, evaluate, repeat.

One ``Iteration`` row per round. Round k starts from the checkpoints of round
k - 1 (round 0, named "base", is the starting model evaluated as it is) and
runs these stages, each recorded in ``Iteration.metrics["done"]`` when it
finishes:

1. ``search``: MCTS on the round's training problems (an eval run of the store).
2. ``mine``: the trees become ``TrainingExample`` rows (SFT, DPO, value, PRM, ORM).
3. ``sft`` (and ``dpo`` when enabled): the policy, LoRA merged into a full model.
4. ``value``: the value head on the new policy's hidden states.
5. ``prm``, ``orm``: the generative critics, from the previous round's critics.
6. ``eval_greedy``, ``eval_mcts``: held-out accuracy with the new checkpoints.
7. ``critics``: each critic's precision, recall and ECE on the held-out trees.

A crash loses at most the stage in progress: ``improve(..., resume=ID)``
skips finished stages, continues an interrupted search or evaluation from its
stored trees, and retrains an unfinished checkpoint (checkpoints are replaced
atomically, so a killed training leaves the previous one intact). A stage
with nothing to learn from (say no trajectory passed the ORM threshold) is
skipped with its reason in ``metrics["skipped"]`` and the previous checkpoint
is kept.

Trained checkpoints are Hugging Face directories, so they run on the ``hf``
backend (which this loop uses) and on ``vllm``; llama.cpp needs a GGUF, which
llama.cpp's ``convert_hf_to_gguf.py`` makes (not shipped with llama-cpp-python).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pandas as pd
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from engine.baselines import EvalSettings
from engine.calibration import classification, verified_outcome
from engine.config import ConfigError, SearchConfig
from engine.types import Problem
from store import schema
from store.schema import utcnow
from training.dpo_config import DPOTrainConfig
from training.mine import MineConfig
from training.orm_config import ORMTrainConfig
from training.prm_config import PRMTrainConfig
from training.sft_config import SFTTrainConfig
from training.value_config import ValueTrainConfig

STAGES = ("search", "mine", "sft", "dpo", "value", "prm", "orm", "eval_greedy", "eval_mcts", "critics")
BASE_STAGES = ("eval_greedy", "eval_mcts", "critics")
TRAINED = ("sft", "dpo", "value", "prm", "orm")
"""Stages that train a checkpoint; each trains on the mined examples of its own kind."""
CRITIC_COLUMNS = {"value": "value_score", "prm": "prm_score", "orm": "orm_score"}

Log = Callable[[str], None]


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass(frozen=True)
class ImproveConfig:
    """Everything one ``canopy improve`` needs; stored with every iteration so a
    resume runs with the same settings. Validated on construction."""

    model: str = field(metadata=_help("Starting policy: a preset, local HF directory or .gguf file."))
    task: str = field(default="arithmetic", metadata=_help("arithmetic or gsm8k."))
    data: str | None = field(default=None, metadata=_help("GSM8K-format JSONL file (task gsm8k)."))
    steps: int = field(default=2, metadata=_help("Arithmetic difficulty: operations per problem."))
    max_number: int = field(default=20, metadata=_help("Arithmetic difficulty: largest operand."))
    iterations: int = field(default=1, metadata=_help("Improvement rounds after the base evaluation."))
    train_problems: int = field(default=20, metadata=_help("Problems searched per round (fresh each round)."))
    eval_problems: int = field(default=20, metadata=_help("Held-out problems, the same every round."))
    max_tokens: int = field(default=256, metadata=_help("Token cap of a greedy held-out answer."))
    dpo: bool = field(default=False, metadata=_help("Also train the policy with DPO on sibling pairs."))
    checkpoints: str = field(default="", metadata=_help("Folder for the rounds' checkpoints."))
    search: SearchConfig = field(default_factory=SearchConfig, metadata=_help("MCTS settings."))
    mine: MineConfig = field(default_factory=MineConfig, metadata=_help("What becomes training data."))
    sft: SFTTrainConfig = field(default_factory=SFTTrainConfig, metadata=_help("Policy SFT."))
    dpo_train: DPOTrainConfig = field(default_factory=DPOTrainConfig, metadata=_help("Policy DPO."))
    value: ValueTrainConfig = field(default_factory=ValueTrainConfig, metadata=_help("Value head."))
    prm: PRMTrainConfig = field(default_factory=PRMTrainConfig, metadata=_help("Process reward model."))
    orm: ORMTrainConfig = field(default_factory=ORMTrainConfig, metadata=_help("Outcome reward model."))

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(bool(self.model.strip()), "model is empty; pass a preset such as smollm2-135m")
        need(self.task in ("arithmetic", "gsm8k"), f"task must be arithmetic or gsm8k, got {self.task!r}")
        need(self.task == "gsm8k" or self.data is None, "--data is for task gsm8k only")
        need(self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}")
        need(self.train_problems >= 1, f"train_problems must be >= 1, got {self.train_problems}")
        need(self.eval_problems >= 1, f"eval_problems must be >= 1, got {self.eval_problems}")
        need(self.max_tokens >= 1, f"max_tokens must be >= 1, got {self.max_tokens}")
        need(bool(self.checkpoints), "checkpoints folder is empty; pass --checkpoints DIR")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["search"] = self.search.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImproveConfig:
        known = {spec.name for spec in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown improve setting(s): {', '.join(unknown)}")
        values = dict(data)
        # Sections (search, mine, the trainers) are the fields whose default is a settings class.
        for spec in fields(cls):
            section = values.get(spec.name)
            if spec.default_factory is not MISSING and isinstance(section, dict):
                kind = spec.default_factory
                values[spec.name] = kind.from_dict(section) if kind is SearchConfig else kind(**section)
        return cls(**values)


# -- problems ---------------------------------------------------------------------


def eval_set(config: ImproveConfig) -> list[Problem]:
    """The held-out problems: the test split (arithmetic), or the first
    ``eval_problems`` of the file (gsm8k with ``data``)."""
    from engine.tasks import load_problems

    if config.task == "gsm8k" and config.data:
        return load_problems("gsm8k", data=config.data, count=config.eval_problems)
    return load_problems(
        config.task,
        split="test",
        count=config.eval_problems,
        steps=config.steps,
        max_number=config.max_number,
    )


def train_set(config: ImproveConfig, round_number: int) -> list[Problem]:
    """Round ``round_number``'s training problems (1-based), disjoint from the
    held-out ones and from other rounds' (as far as the source has problems)."""
    from engine.tasks import TaskError, load_problems

    start = (round_number - 1) * config.train_problems
    if config.task == "gsm8k" and config.data:
        start += config.eval_problems
        problems = load_problems("gsm8k", data=config.data, count=start + config.train_problems)[start:]
    else:
        problems = load_problems(
            config.task,
            split="train",
            count=start + config.train_problems,
            steps=config.steps,
            max_number=config.max_number,
        )[start:]
    if not problems:
        raise TaskError(
            f"no training problems left for round {round_number}: the source has {start} or fewer"
        )
    return problems


# -- iteration rows ---------------------------------------------------------------


def _load(engine: Engine, iteration_id: int) -> schema.Iteration:
    with Session(engine) as session:
        row = session.get(schema.Iteration, iteration_id)
    if row is None:
        raise ConfigError(f"no iteration {iteration_id} in this database (the app's Improve page lists them)")
    return row


def _update(engine: Engine, iteration_id: int, **changes: Any) -> schema.Iteration:
    """Apply ``changes`` (``metrics`` is merged key by key) and commit."""
    with Session(engine) as session:
        row = session.get(schema.Iteration, iteration_id)
        metrics = dict(row.metrics)
        metrics.update(changes.pop("metrics", {}))
        row.metrics = metrics
        for name, value in changes.items():
            setattr(row, name, value)
        row.updated_at = utcnow()
        session.add(row)
        session.commit()
        session.refresh(row)
        return row


def _create(engine: Engine, config: ImproveConfig, *, name: str, parent: schema.Iteration | None) -> int:
    checkpoints = (
        dict(parent.metrics["checkpoints"])
        if parent is not None
        else {"policy": config.model, "value": None, "prm": None, "orm": None}
    )
    with Session(engine) as session:
        row = schema.Iteration(
            parent_id=parent.id if parent is not None else None,
            name=name,
            model=config.model,
            checkpoint_path=None,
            status="running",
            stage="starting",
            metrics={
                "config": config.to_dict(),
                "round": 0 if parent is None else parent.metrics.get("round", 0) + 1,
                "checkpoints": checkpoints,
                "done": [],
                "runs": {},
            },
        )
        session.add(row)
        session.commit()
        return row.id


def _chain(engine: Engine, iteration_id: int) -> list[schema.Iteration]:
    """The iteration and its ancestors, oldest first."""
    chain = [_load(engine, iteration_id)]
    while chain[0].parent_id is not None:
        chain.insert(0, _load(engine, chain[0].parent_id))
    return chain


# -- the loop ---------------------------------------------------------------------


def improve(
    engine: Engine,
    config: ImproveConfig | None = None,
    *,
    resume: int | None = None,
    log: Log | None = None,
) -> list[int]:
    """Run (or, with ``resume``, continue) the loop; returns the iteration ids
    from the base to the last round.

    Raises:
        ConfigError: neither or both of ``config`` and ``resume``, an unknown
            iteration, or bad settings (also a trainer's own validation).
    """
    log = log or _stderr
    if (config is None) == (resume is None):
        raise ConfigError("pass either a config (a new loop) or resume=ITERATION_ID, not both")
    if resume is not None:
        chain = _chain(engine, resume)
        config = ImproveConfig.from_dict(chain[0].metrics["config"])
        log(
            f"resuming the loop from iteration {resume}"
            f" ({len(chain) - 1} of {config.iterations} rounds begun)"
        )
    else:
        chain = [_load(engine, _create(engine, config, name="base", parent=None))]
        log(f"iteration {chain[0].id}: evaluating the starting model {config.model}")
    held_out = eval_set(config)
    for position in range(config.iterations + 1):
        if position >= len(chain):
            parent = chain[-1]
            chain.append(_load(engine, _create(engine, config, name=f"round {position}", parent=parent)))
            log(f"iteration {chain[-1].id}: round {position} of {config.iterations}")
        row = chain[position]
        if row.status == "completed":
            continue
        _run_iteration(engine, config, row.id, position, held_out, log)
        chain[position] = _load(engine, row.id)
    return [row.id for row in chain]


def _run_iteration(
    engine: Engine,
    config: ImproveConfig,
    iteration_id: int,
    round_number: int,
    held_out: list[Problem],
    log: Log,
) -> None:
    stages = BASE_STAGES if round_number == 0 else STAGES
    _update(engine, iteration_id, status="running")
    try:
        for stage in stages:
            row = _load(engine, iteration_id)
            if stage in row.metrics["done"]:
                continue
            if stage == "dpo" and not config.dpo:
                continue
            _update(engine, iteration_id, stage=stage)
            started = time.perf_counter()
            changes = STAGE_FUNCTIONS[stage](engine, config, row, round_number, held_out, log)
            row = _load(engine, iteration_id)
            seconds = dict(row.metrics.get("seconds", {}), **{stage: round(time.perf_counter() - started, 1)})
            _update(
                engine,
                iteration_id,
                metrics={**changes, "done": [*row.metrics["done"], stage], "seconds": seconds},
            )
        final = _load(engine, iteration_id)
        _update(
            engine,
            iteration_id,
            status="completed",
            stage="done",
            checkpoint_path=final.metrics["checkpoints"]["policy"],
        )
    except KeyboardInterrupt:
        _update(engine, iteration_id, status="interrupted")
        log(f"iteration {iteration_id} interrupted; continue with `canopy improve --resume {iteration_id}`")
        raise
    except BaseException as error:
        _update(engine, iteration_id, status="failed", metrics={"error": f"{type(error).__name__}: {error}"})
        log(
            f"iteration {iteration_id} failed;"
            f" after fixing the cause, `canopy improve --resume {iteration_id}`"
        )
        raise


def _merge(row: schema.Iteration, key: str, **values: Any) -> dict[str, Any]:
    """``{key: row.metrics[key] updated with values}``, for ``_update(metrics=...)``."""
    return {key: {**row.metrics.get(key, {}), **values}}


# -- stages -----------------------------------------------------------------------


def _components(checkpoints: dict[str, str | None], search: SearchConfig):
    from engine.api import build_components

    search = replace(
        search,
        value_checkpoint=checkpoints["value"],
        prm_checkpoint=checkpoints["prm"],
        orm_checkpoint=checkpoints["orm"],
    )
    return build_components(search, model=checkpoints["policy"]), search


def _evaluate(
    engine: Engine,
    row: schema.Iteration,
    *,
    run_key: str,
    method: str,
    problems: list[Problem],
    config: ImproveConfig,
    log: Log,
) -> dict[str, Any]:
    from engine.evaluate import evaluate

    components, search = _components(row.metrics["checkpoints"], config.search)
    settings = EvalSettings(max_tokens=config.max_tokens, search=search)

    def remember(run_id: int) -> None:
        _update(engine, row.id, metrics=_merge(_load(engine, row.id), "runs", **{run_key: run_id}))

    def progress(record, done: int, total: int) -> None:
        _update(engine, row.id, stage=f"{run_key} {done}/{total}")
        log(
            f"  {run_key} {done}/{total}: answer {record.answer!r}"
            f" (gold {record.gold}, {record.generated_tokens} tokens)"
        )

    result = evaluate(
        engine,
        method=method,
        problems=problems,
        components=components,
        settings=settings,
        run_id=row.metrics["runs"].get(run_key),
        on_problem=progress,
        on_run_created=remember,
        meta={"improve_iteration": row.id, "stage": run_key},
        iteration_id=row.id,
    )
    log(f"  {run_key}: accuracy {result.accuracy}, {result.generated_tokens:.0f} tokens per problem")
    return {"run_id": result.run_id, "accuracy": result.accuracy, "tokens": result.generated_tokens}


def _stage_search(engine, config, row, round_number, held_out, log) -> dict[str, Any]:
    result = _evaluate(
        engine,
        row,
        run_key="search",
        method="mcts",
        problems=train_set(config, round_number),
        config=config,
        log=log,
    )
    return {"train_search": {"solved": result["accuracy"], "tokens": result["tokens"]}}


def _stage_mine(engine, config, row, round_number, held_out, log) -> dict[str, Any]:
    from training.mine import mine_trees, trees_of_run

    trees = trees_of_run(engine, row.metrics["runs"]["search"])
    counts = mine_trees(engine, trees, config.mine, iteration_id=row.id)
    log(f"  mined {len(trees)} trees: " + ", ".join(f"{count} {kind}" for kind, count in counts.items()))
    return {
        "data": {f"{kind}_examples": count for kind, count in counts.items()} | {"tree_count": len(trees)}
    }


def _train(engine, config: ImproveConfig, row: schema.Iteration, kind: str, log: Log) -> dict[str, Any]:
    """Train one checkpoint of ``kind`` into this round's folder; on nothing to
    learn from, keep the previous checkpoint and say why."""
    from training import dpo_trainer, orm_trainer, prm_trainer, sft_trainer, value_trainer
    from training.mine import load_examples

    checkpoints = dict(row.metrics["checkpoints"])
    directory = Path(config.checkpoints) / f"iteration-{row.id}" / kind
    examples = load_examples(engine, kind=kind, iteration_id=row.id)  # trainers and kinds share names
    slot = "policy" if kind in ("sft", "dpo") else kind
    # The policy trains from the last policy; critics from their last checkpoint,
    # else the starting model (the PRM/ORM start as the policy asked a rubric).
    base = checkpoints[slot] or config.model
    if kind == "value":
        base = checkpoints["policy"]  # the value head reads the new policy's hidden states

    def progress(message: str) -> None:
        _update(engine, row.id, stage=f"{kind}: {message}")

    if not examples:
        reason = f"no {kind} examples were mined"
        log(f"  {kind}: skipped, {reason}")
        return _merge(row, "skipped", **{kind: reason})
    train = {
        "sft": (sft_trainer.train_sft, config.sft),
        "dpo": (dpo_trainer.train_dpo, config.dpo_train),
        "value": (value_trainer.train_value, config.value),
        "prm": (prm_trainer.train_prm, config.prm),
        "orm": (orm_trainer.train_orm, config.orm),
    }
    function, settings = train[kind]
    log(f"  {kind}: training on {len(examples)} examples from {base}")
    try:
        result = function(examples, base_model=base, output_dir=directory, config=settings, progress=progress)
    except ConfigError as error:  # e.g. only one class of labels: nothing to learn
        log(f"  {kind}: skipped, {error}")
        return _merge(row, "skipped", **{kind: str(error)})
    log(f"  {kind}: loss {result.train_loss:.4f} after {result.steps} steps, saved {directory}")
    changes = _merge(row, "checkpoints", **{slot: str(directory)})
    changes |= _merge(row, "loss", **{kind: result.train_loss})
    if result.eval_loss is not None:
        changes["loss"][f"{kind}_eval"] = result.eval_loss
    return changes


def _stage_trainer(kind: str):
    def stage(engine, config, row, round_number, held_out, log) -> dict[str, Any]:
        return _train(engine, config, row, kind, log)

    return stage


def _stage_eval(method: str):
    def stage(engine, config, row, round_number, held_out, log) -> dict[str, Any]:
        result = _evaluate(
            engine, row, run_key=f"eval_{method}", method=method, problems=held_out, config=config, log=log
        )
        return _merge(row, "accuracy", **{method: result["accuracy"]}) | _merge(
            row, "tokens", **{method: result["tokens"]}
        )

    return stage


def _stage_critics(engine, config, row, round_number, held_out, log) -> dict[str, Any]:
    """Each active critic's precision, recall and ECE over the held-out MCTS
    trees' nodes that have a verified outcome."""
    frame = critic_frame(engine, row.metrics["runs"]["eval_mcts"])
    report: dict[str, Any] = {}
    for name, column in CRITIC_COLUMNS.items():
        scored = frame.dropna(subset=[column, "outcome"])
        if scored.empty:
            continue
        stats = classification(scored[column], scored["outcome"], threshold=0.5)
        report[name] = {key: stats[key] for key in ("precision", "recall", "ece")}
        numbers = ", ".join(f"{key} {value}" for key, value in report[name].items())
        log(f"  {name} over {stats['nodes']} nodes: {numbers}")
    return {"critics": report}


def critic_frame(engine: Engine, run_id: int) -> pd.DataFrame:
    """The run's non-root nodes with their critic scores and verified outcome."""
    statement = (
        select(schema.Node, schema.Problem.answer)
        .join(schema.Tree, schema.Tree.id == schema.Node.tree_id)
        .join(schema.Problem, schema.Problem.id == schema.Tree.problem_id)
        .where(schema.Tree.run_id == run_id, schema.Node.parent_index >= 0)
    )
    with Session(engine) as session:
        rows = session.exec(statement).all()
    records = [
        {
            **{column: getattr(node, column) for column in CRITIC_COLUMNS.values()},
            "outcome": verified_outcome(node.terminal, node.answer, node.rollouts, gold),
        }
        for node, gold in rows
    ]
    return pd.DataFrame(records, columns=[*CRITIC_COLUMNS.values(), "outcome"])


STAGE_FUNCTIONS = {
    "search": _stage_search,
    "mine": _stage_mine,
    **{kind: _stage_trainer(kind) for kind in TRAINED},
    "eval_greedy": _stage_eval("greedy"),
    "eval_mcts": _stage_eval("mcts"),
    "critics": _stage_critics,
}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def summary(engine: Engine, iteration_ids: list[int]) -> list[dict[str, Any]]:
    """One dict per iteration: id, name, status, accuracies, data sizes, losses, checkpoint."""
    rows = []
    for iteration_id in iteration_ids:
        row = _load(engine, iteration_id)
        metrics = row.metrics
        rows.append(
            {
                "id": row.id,
                "name": row.name,
                "status": row.status,
                "accuracy": metrics.get("accuracy", {}),
                "data": metrics.get("data", {}),
                "loss": metrics.get("loss", {}),
                "critics": metrics.get("critics", {}),
                "skipped": metrics.get("skipped", {}),
                "checkpoint": row.checkpoint_path,
            }
        )
    return rows
